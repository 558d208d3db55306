"""The blocking transport: pooled keep-alive ``http.client`` connections, and the driver
that runs plans over them with retries.

Why ``http.client`` and not aiohttp on a private loop thread: a blocking call costs no
thread hop and no event loop, streams a JSONL body with ``readline`` as it arrives, and
survives ``fork`` trivially — a pool is keyed to the pid that made it, so a forked child
never reads from a socket it shares with its parent; it just opens its own.
"""

from __future__ import annotations

import http.client
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

from engine.client._core import ClientCore, HttpRequest, HttpResponse, Plan, RetryPolicy
from engine.common._auth import url_credentials
from engine.common._errors import SendError
from engine.common._http import Route, Routes, describe_os_error

__all__ = ["SyncDriver", "SyncTransport", "Exchange"]

_Key = tuple[str, str, int]
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
_MAX_IDLE_PER_HOST = 16


class Exchange:
    """A response whose body is not read yet; give the connection back by reading it all."""

    def __init__(self, pool: SyncTransport, key: _Key, conn: http.client.HTTPConnection,
                 resp: http.client.HTTPResponse) -> None:
        self._pool, self._key, self._conn, self._resp = pool, key, conn, resp
        self.status = resp.status
        self.headers = {k.lower(): v for k, v in resp.getheaders()}

    def read(self) -> HttpResponse:
        try:
            body = self._resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self._conn.close()
            raise SendError(f"reading the answer failed: {type(exc).__name__}: {exc}",
                            retriable=True) from None
        self._release()
        return HttpResponse(self.status, self.headers, body)

    def lines(self) -> Iterator[bytes]:
        """Non-empty lines as they arrive; an abandoned iteration closes the connection."""
        finished = False
        try:
            while line := self._resp.readline():
                if line.strip():
                    yield line
            finished = True
        except (OSError, http.client.HTTPException) as exc:
            raise SendError(f"stream broke off: {type(exc).__name__}: {exc}",
                            retriable=True) from None
        finally:
            if finished:
                self._release()
            else:
                self._conn.close()

    def _release(self) -> None:
        if self._resp.will_close:
            self._conn.close()
        else:
            self._pool.give_back(self._key, self._conn)


class SyncTransport:
    """Idle keep-alive connections per (scheme, host, port); thread-safe and fork-aware."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._idle: dict[_Key, list[http.client.HTTPConnection]] = {}
        self._routes = Routes()  # proxy and CAs per host (engine.common._http); no ~/.netrc

    def open(self, request: HttpRequest) -> Exchange:
        """Send ``request``; a stale pooled connection is replaced once. No answer → SendError."""
        parts = urlsplit(request.url)
        key = (parts.scheme, parts.hostname or "", parts.port or _default_port(parts.scheme))
        route = self._routes(request.url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = dict(request.headers)
        if route.proxy.url and key[0] == "http":  # through the proxy in the clear: an absolute URI
            target = f"http://{parts.netloc}{target}"
            headers.update(_proxy_auth(route.proxy.url))
        conn, reused = self._take(key)
        while True:
            try:
                conn.request(request.method, target, request.body, headers)
                return Exchange(self, key, conn, conn.getresponse())
            except _STALE as exc:
                conn.close()
                if not reused:
                    raise _no_answer(exc, route) from None
                conn, reused = self._connect(key), False
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise _no_answer(exc, route) from None

    def give_back(self, key: _Key, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if os.getpid() == self._pid and len(idle) < _MAX_IDLE_PER_HOST:
                idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for conn in conns:
            conn.close()

    def _take(self, key: _Key) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if os.getpid() != self._pid:
                # the parent's sockets: drop (never read or close-notify them) and start afresh
                self._idle, self._pid = {}, os.getpid()
            idle = self._idle.get(key)
            if idle:
                return idle.pop(), True
        return self._connect(key), False

    def _connect(self, key: _Key) -> http.client.HTTPConnection:
        scheme, host, port = key
        route = self._routes(f"{scheme}://{host}:{port}")
        proxy = urlsplit(route.proxy.url) if route.proxy.url else None
        where = (proxy.hostname or "", proxy.port or 80) if proxy else (host, port)
        if scheme != "https":
            return http.client.HTTPConnection(*where, timeout=self._timeout_s)
        conn = http.client.HTTPSConnection(*where, timeout=self._timeout_s, context=route.context)
        if route.proxy.url:  # CONNECT: only the tunnel's request carries the proxy's credentials
            conn.set_tunnel(host, port, headers=_proxy_auth(route.proxy.url))
        return conn


def _proxy_auth(proxy_url: str) -> dict[str, str]:
    """The proxy URL's credentials as the proxy takes them (no header without any)."""
    auth = url_credentials(proxy_url)[1]
    return {"Proxy-Authorization": auth} if auth else {}


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def _no_answer(exc: BaseException, route: Route | None = None) -> SendError:
    what = (route is not None and describe_os_error(exc, route.proxy)) \
        or f"{type(exc).__name__}: {exc}"
    return SendError(f"no answer from the server: {what}", retriable=True)


class SyncDriver:
    """Runs plans (and opens streams) over a :class:`SyncTransport`, retrying per policy."""

    def __init__(self, core: ClientCore, retry: RetryPolicy, timeout_s: float) -> None:
        self.core = core
        self._retry = retry
        self.transport = SyncTransport(timeout_s)

    def run(self, plan: Plan[Any]) -> Any:
        try:
            request = next(plan)
            while True:
                response = self.open(request)
                assert isinstance(response, HttpResponse)
                request = plan.send(response)
        except StopIteration as stop:
            return stop.value

    def open(self, request: HttpRequest) -> HttpResponse | Exchange:
        """The answer, after retries: a streaming 2xx comes back unread as an Exchange."""
        deadline = self._retry.deadline()
        attempt = 0
        while True:
            attempt += 1
            response: HttpResponse | None = None
            try:
                exchange = self.transport.open(request)
                if request.stream and 200 <= exchange.status < 300:
                    return exchange
                response = exchange.read()
                error = None
            except SendError as exc:
                error = exc
            delay_s = self._retry.delay_s(request, attempt, deadline, response, error)
            if delay_s is None:
                if error is not None:
                    raise error
                assert response is not None
                return response
            time.sleep(delay_s)

    def stream(self, name: str, request: HttpRequest,
               on_404: Callable[[], Iterable[Any]] | None = None) -> Iterator[Any]:
        """Decoded lines of a JSONL answer, lazily. An error status raises HTTPError, except a
        404 when ``on_404`` (the route's fallback) is given: its items are yielded instead."""
        answer = self.open(request)
        if isinstance(answer, HttpResponse):
            if answer.status == 404 and on_404 is not None:
                yield from on_404()
                return
            raise self.core.http_error(request, answer.status, answer.body)
        for line in answer.lines():
            yield self.core.decode_line(name, line)
