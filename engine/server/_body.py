"""Request bodies: size limits, decompression, decoding, auth — and the JSON error they raise.

Every limit is enforced before memory is spent on it: ``Content-Length`` is checked before
a byte is read, the bytes actually read are counted (chunked uploads have no length), and
decompression stops one byte past the limit, so a zip bomb costs at most the limit.
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import Awaitable, Iterator
from typing import TYPE_CHECKING, TypeVar

import msgspec
import zstandard

from engine.server._limits import MAX_JSON_DEPTH, LimitExceeded, check_json_depth
from engine.wire._codec import uuid7
from engine.wire.calls import StartedCallSchemaForInsert

if TYPE_CHECKING:
    from aiohttp import StreamReader, web

    from engine.server._ingest_models import RawStartedCall

T = TypeVar("T")

ACCEPTED_ENCODINGS = ("zstd", "gzip")
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
_READ_CHUNK_BYTES = 256 * 1024
# A body must keep coming: no pause longer than this, and past the grace at least this rate
# on average (a client sending a byte a minute held its connection and buffer for ever)
BODY_IDLE_TIMEOUT_S = 30.0
BODY_GRACE_S = 10.0
MIN_BODY_BYTES_PER_S = 16 * 1024


class ApiError(Exception):
    """An error answer: ``status`` plus a human-readable ``reason`` sent as JSON."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


def error_response(status: int, reason: str, headers: dict[str, str] | None = None):
    from aiohttp import web  # here, not at the top: the ingest models' decoding needs no aiohttp

    return web.json_response({"reason": reason}, status=status, headers=headers)


def _too_large(what: str, max_body_bytes: int) -> ApiError:
    return ApiError(413, f"{what} exceeds the {max_body_bytes}-byte request body limit")


async def read_body(request: web.Request, max_body_bytes: int) -> bytes:
    """The request body, decompressed, never larger than ``max_body_bytes``."""
    declared = request.content_length
    if declared is not None and declared > max_body_bytes:
        raise _too_large(f"Content-Length {declared}", max_body_bytes)
    raw = await _read_capped(request.content, max_body_bytes, declared)
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    return decompress(raw, encoding, max_body_bytes)


async def _read_capped(stream: StreamReader, max_body_bytes: int, declared: int | None) -> bytes:
    chunks, size = [], 0
    pace = BodyPace(stream)
    while declared is None or size < declared:
        chunk = await pace.read(stream.readany())
        if not chunk:
            if declared is None:
                break
            raise ApiError(400, f"request body ended after {size} of the {declared} "
                           "bytes its Content-Length declares")
        chunks.append(chunk)
        size += len(chunk)
        if size > max_body_bytes:  # only a chunked body gets here: a declared one was checked
            raise _too_large("request body", max_body_bytes)
        pace.check(size)
    # the chunks as received, joined once (readexactly would copy every byte twice)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class BodyPace:
    """The pace a body must keep, whoever parses it (JSON, multipart): no pause longer than
    ``BODY_IDLE_TIMEOUT_S``, and past ``BODY_GRACE_S`` at least ``MIN_BODY_BYTES_PER_S`` on
    average; else a 408 (the middleware closes the connection)."""

    def __init__(self, stream: StreamReader) -> None:
        self._stream = stream
        self._began = time.monotonic()

    async def read(self, reading: Awaitable[T]) -> T:
        """The result of ``reading`` from the stream, which may wait for many bytes (a
        multipart reader waits for a boundary's worth): the pace is checked on the bytes
        that arrive meanwhile, at least every ``BODY_IDLE_TIMEOUT_S``."""
        import asyncio  # here: the ingest workers import this module's decoders, not its server side

        task = asyncio.ensure_future(reading)
        try:
            while True:
                seen = self._stream.total_bytes
                done, _ = await asyncio.wait((task,), timeout=BODY_IDLE_TIMEOUT_S)
                if done:
                    return task.result()
                if self._stream.total_bytes == seen:
                    raise _too_slow(f"no byte of the request body for {BODY_IDLE_TIMEOUT_S:.0f} s")
                self.check(self._stream.total_bytes)
        finally:
            task.cancel()

    def check(self, size: int) -> None:
        """408 when ``size`` bytes so far are under the minimum rate, past the grace."""
        elapsed_s = time.monotonic() - self._began
        if elapsed_s > BODY_GRACE_S and size < MIN_BODY_BYTES_PER_S * elapsed_s:
            raise _too_slow(f"request body arriving at {size / elapsed_s:.0f} bytes/s, "
                            f"under {MIN_BODY_BYTES_PER_S} bytes/s")


def _too_slow(why: str) -> ApiError:
    return ApiError(408, f"request body too slow: {why}")  # the middleware closes the connection


def decompress(raw: bytes, encoding: str, max_body_bytes: int) -> bytes:
    if encoding in ("", "identity"):
        return raw
    if encoding == "zstd":
        return _unzstd(raw, max_body_bytes)
    if encoding in ("gzip", "x-gzip"):
        return _gunzip(raw, max_body_bytes)
    raise ApiError(
        415, f"Content-Encoding {encoding!r} not accepted; use one of {list(ACCEPTED_ENCODINGS)}"
    )


def _unzstd(raw: bytes, max_body_bytes: int) -> bytes:
    out = bytearray()
    try:
        with zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True) as reader:
            while chunk := reader.read(_READ_CHUNK_BYTES):
                out += chunk
                if len(out) > max_body_bytes:
                    raise _too_large("decompressed body", max_body_bytes)
    except zstandard.ZstdError as exc:
        raise ApiError(400, f"invalid zstd body: {exc}") from None
    return bytes(out)


def _gunzip(raw: bytes, max_body_bytes: int) -> bytes:
    """Every gzip member in ``raw``, inflating at most one byte past the limit."""
    out = bytearray()
    rest = raw
    try:
        while rest:
            inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            out += inflater.decompress(rest, max_body_bytes + 1 - len(out))
            if len(out) > max_body_bytes:
                raise _too_large("decompressed body", max_body_bytes)
            if not inflater.eof:
                raise ApiError(400, "invalid gzip body: truncated stream")
            rest = inflater.unused_data
    except zlib.error as exc:
        raise ApiError(400, f"invalid gzip body: {exc}") from None
    return bytes(out)


@contextlib.contextmanager
def decode_errors() -> Iterator[None]:
    """Malformed JSON (invalid UTF-8 too) is a 400, a schema violation a 422 naming the path."""
    try:
        yield
    except LimitExceeded as exc:
        raise ApiError(422, str(exc)) from None
    except RecursionError:  # msgspec's own limit, on a stack deeper than usual
        raise ApiError(422, f"request body: JSON nested more than {MAX_JSON_DEPTH} levels deep") from None
    except msgspec.ValidationError as exc:
        raise ApiError(422, f"invalid request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"malformed JSON: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"malformed JSON: invalid UTF-8: {exc}") from None


def decode_json(body: bytes, type_: type[T]) -> T:
    """Decode and validate ``body`` as ``type_``, with the errors of :func:`decode_errors`."""
    with decode_errors():
        check_json_depth(body)
        return msgspec.json.decode(body, type=type_)


def path_project(request: web.Request) -> str:
    """``entity/project`` from a v2 route's path."""
    return f"{request.match_info['entity']}/{request.match_info['project']}"


def check_same_project(project_id: str, path_project: str, field: str) -> None:
    if project_id != path_project:
        raise ApiError(
            422, f"{field}: project_id {project_id!r} differs from the path's {path_project!r}"
        )


def fill_ids(start: StartedCallSchemaForInsert | RawStartedCall) -> dict[str, str]:
    """Ids a client left out are assigned by the server, as the real one does."""
    if start.id is None:
        start.id = uuid7()
    if start.trace_id is None:
        start.trace_id = uuid7()
    return {"id": start.id, "trace_id": start.trace_id}
