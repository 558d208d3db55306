"""The HTTP transport of the sender: one aiohttp session with a keep-alive pool (WIRE.md §1).

``Transport.post`` returns every answer the server gives, error statuses included, as a
``Response``: judging them is the retry policy's job (``engine.common._retry.classify``). Only a
request that got no answer (connection refused or reset, timeout) raises, as
``SendError(retriable=True)``. ``Compressor`` zstd-compresses bodies off the event loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Executor
from types import TracebackType
from typing import NamedTuple

import aiohttp
import aiohttp.payload
import msgspec
import yarl
import zstandard

from engine.common._auth import basic_auth, url_credentials
from engine.common._errors import HTTPError, SendError, reason_of
from engine.common._http import choose_proxy, describe_client_error, https_context
from engine.common._machine import same_machine
from engine.common._redact import redact_url
from engine.common._retry import WEB_PAGE_REASON, is_web_page


def accepted_encodings(info: object) -> frozenset[str]:
    """The content encodings a ``/server_info`` answer advertises (none if it says nothing)."""
    return _encodings(info.get("accepts_encodings") if isinstance(info, dict) else None)


def takes_upsert_batch(info: object) -> bool:
    """Whether a ``/server_info`` answer says ``/call/upsert_batch`` is taken for every
    project beside calls/complete (``engine serve`` does; weave's hosted server may refuse
    it for a project with CALLS_COMPLETE_MODE_REQUIRED, and says nothing)."""
    return isinstance(info, dict) and info.get("accepts_upsert_batch") is True


def choose_compression(setting: str, info: object) -> tuple[str, str]:
    """``("zstd" | "none", why)`` for the ``compression`` setting and a ``/server_info``
    answer (None when there was none). ``"auto"`` compresses when the server accepts zstd
    and runs on another machine: one on this machine (it says so with its ``machine``
    token) gets plain bodies, which cost it and the sender less CPU and cross no link."""
    if setting != "auto":
        return setting, f"compression = {setting!r}"
    if "zstd" not in accepted_encodings(info):
        return "none", "the server does not advertise zstd"
    if same_machine(info):
        return "none", "the server runs on this machine"
    return "zstd", "the server accepts zstd"


class Response(NamedTuple):
    """One answer from the server; ``rtt_s`` spans sending the request to reading the body."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    rtt_s: float


class Transport:
    """POSTs bodies to one trace server over a pooled keep-alive aiohttp session.

    Create it inside the event loop that will use it (aiohttp binds to the running loop).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        user_agent: str = "engine/0.1",
        pool_size: int = 32,
        connect_timeout_s: float = 10,
        request_timeout_s: float = 60,
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        url = yarl.URL(base_url.rstrip("/"))
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be an http(s) URL, got {redact_url(str(url))}")
        # Paths are appended, not joined: a base like ``https://host/traces`` keeps its prefix.
        self._base_url, url_auth = url_credentials(str(url))
        self._display_url = redact_url(str(url))
        self._connect_timeout_s = connect_timeout_s
        self._request_timeout_s = request_timeout_s
        self._headers = _base_headers(user_agent, api_key, extra_headers)
        if url_auth:
            self._headers["Authorization"] = url_auth
        # the proxy and the CAs are chosen here, once (engine.common._http); trust_env stays
        # off, so aiohttp never reads ~/.netrc for a credential to add
        self._proxy = choose_proxy(str(url))
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=pool_size, ssl=https_context(str(url)) or True),
            timeout=self._timeout(request_timeout_s),
            proxy=self._proxy.url,
        )

    async def __aenter__(self) -> Transport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    @property
    def closed(self) -> bool:
        return self._session.closed

    async def post(
        self,
        path: str,
        body: bytes | list[bytes],
        *,
        content_encoding: str | None = None,
        retry_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Response:
        """POST ``body`` (already encoded, and compressed if ``content_encoding`` says so;
        a list of pieces is written as one body, gathered by the kernel)."""
        request_headers = dict(self._headers)
        request_headers["Content-Type"] = "application/json"
        if content_encoding:
            request_headers["Content-Encoding"] = content_encoding
        if retry_id:
            request_headers["X-Weave-Retry-Id"] = retry_id
        if headers:
            request_headers.update(headers)
        if isinstance(body, list):
            data: bytes | aiohttp.payload.Payload = _BodyParts(body)
        else:
            data = _BodyAfterHeaders(body) if len(body) >= _SEPARATE_HEADERS_BYTES else body
        return await self._request("POST", path, data, request_headers, timeout_s)

    async def get_json(self, path: str) -> object:
        """GET ``path`` and decode its JSON; an error status raises ``HTTPError``."""
        response = await self._request("GET", path, None, dict(self._headers), None)
        url = self._display(path)
        if not 200 <= response.status < 300:
            raise HTTPError(response.status, reason_of(response.body), url=url)
        if is_web_page(response.body):
            raise SendError(f"GET {url} {WEB_PAGE_REASON}", retriable=False)
        try:
            return msgspec.json.decode(response.body)
        except msgspec.DecodeError as exc:
            raise SendError(f"GET {url}: answer is not JSON: {exc}", retriable=False) from None

    async def _request(
        self,
        method: str,
        path: str,
        body: bytes | aiohttp.payload.Payload | None,
        headers: dict[str, str],
        timeout_s: float | None,
    ) -> Response:
        limit_s = self._request_timeout_s if timeout_s is None else timeout_s
        timeout = self._timeout(limit_s)  # never None: aiohttp reads None as "no timeout"
        started = time.perf_counter()
        try:
            async with self._session.request(
                method, self._base_url + path, data=body, headers=headers, timeout=timeout
            ) as answer:
                data = await answer.read()
                return Response(answer.status, answer.headers, data, time.perf_counter() - started)
        except asyncio.TimeoutError:
            raise self._failure(method, path, f"no answer within {limit_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise self._failure(method, path, describe_client_error(exc, self._proxy.shown)) from None

    def _failure(self, method: str, path: str, what: str) -> SendError:
        return SendError(f"{method} {self._display(path)}: {what}", retriable=True)

    def _timeout(self, total_s: float) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=total_s, sock_connect=self._connect_timeout_s)

    def _display(self, path: str) -> str:
        return self._display_url + path


# Bodies from this size on are written after the headers instead of joined to them.
_SEPARATE_HEADERS_BYTES = 64 << 10


class _BodyAfterHeaders(aiohttp.payload.BytesPayload):
    """A request body written on its own, after the headers.

    aiohttp (3.12+) holds the headers back to write them together with the body, and on
    Python < 3.12.9 it does so by joining them into one new bytes object: a copy of every
    megabyte of the body, plus the page faults of a fresh buffer that size. Sending the
    headers first costs one small extra write instead.
    """

    def __init__(self, body: bytes) -> None:
        super().__init__(body, content_type="application/json")

    async def write_with_length(self, writer: aiohttp.abc.AbstractStreamWriter,
                                content_length: int | None) -> None:
        writer.send_headers()
        await super().write_with_length(writer, content_length)


class _BodyParts(aiohttp.payload.Payload):
    """A request body in pieces (a batch's runs of calls), written after the headers with
    one ``writelines``: the kernel gathers them (writev), no join copies them first."""

    _autoclose = True  # held in memory, as bytes are

    def __init__(self, parts: list[bytes]) -> None:
        super().__init__(parts, content_type="application/json")
        self._size = sum(map(len, parts))

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self._value).decode(encoding, errors)

    async def write(self, writer: aiohttp.abc.AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: aiohttp.abc.AbstractStreamWriter,
                                content_length: int | None) -> None:
        writer.send_headers()
        transport = writer.transport
        if transport is None or transport.is_closing():
            raise aiohttp.ClientConnectionResetError("cannot write to a closing transport")
        transport.writelines(self._value)
        await writer.drain()


class Compressor:
    """zstd compression at a settable level, safe to call from many executor threads.

    A ``ZstdCompressor`` is not thread-safe, so each thread gets its own (``threading.local``).
    """

    def __init__(self, level: int = 3) -> None:
        if not -7 <= level <= 22:
            raise ValueError(f"zstd level must be in [-7, 22], got {level}")
        self.level = level
        self._local = threading.local()

    def compress(self, body: bytes) -> bytes:
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = self._local.compressor = zstandard.ZstdCompressor(level=self.level)
        return compressor.compress(body)

    async def compress_async(self, body: bytes, executor: Executor | None) -> bytes:
        """Compress on ``executor`` (None: the loop's default) so the event loop keeps running."""
        return await asyncio.get_running_loop().run_in_executor(executor, self.compress, body)


def _base_headers(
    user_agent: str, api_key: str | None, extra_headers: Mapping[str, str] | None
) -> dict[str, str]:
    headers = {"User-Agent": user_agent}
    if api_key:
        headers["Authorization"] = basic_auth(api_key)
    if extra_headers:
        headers.update(extra_headers)
    return headers


def _encodings(value: object) -> frozenset[str]:
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list):
        return frozenset()
    return frozenset(v.strip().lower() for v in value if isinstance(v, str) and v.strip())
