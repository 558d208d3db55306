"""Bounded connections for ``engine serve``: a cap with a clear refusal, and slow clients cut off.

- **Connection cap** (``max_connections``): past it a new connection gets one
  ``503 {"reason": …}`` with ``Retry-After`` and is closed, instead of the server running
  out of file descriptors (which broke every client and the SQLite file with them).
- **Request heads**: a connection that has not sent a complete request head within
  ``header_timeout_s`` (a new one, or an idle keep-alive one) is closed. aiohttp (3.14.4 on:
  the floor in pyproject.toml) runs its keep-alive timer from the connection's start, so
  ``keepalive_timeout=header_timeout_s`` covers both; a client trickling header bytes no
  longer holds a connection for ever. Over HTTPS the TLS handshake is bounded by the same
  ``header_timeout_s`` (asyncio's default would let a silent client hold it for 60 s).
- **Bodies**: :func:`engine.server._body.read_body` answers 408 to a body that stalls for
  ``body_idle_timeout_s`` or arrives slower than ``MIN_BODY_BYTES_PER_S`` past a grace.
- **Clients that leave mid-request** (a reset, a close before the body is whole): counted,
  not logged. aiohttp logs every exception a handler raises with its traceback (~40 lines),
  and a flaky client or load balancer that drops connections filled the log: 2,000 such
  clients wrote 8 MB of tracebacks into ``engine relay``'s.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import msgspec
from aiohttp import web

DEFAULT_HEADER_TIMEOUT_S = 30.0


def _refusal(command: str, max_connections: int) -> bytes:
    body = msgspec.json.encode({"reason": f"{command} is at its limit of {max_connections} "
                                          "connections; retry later"})  # fmt: skip
    head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Retry-After: 1\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n")  # fmt: skip
    return head.encode() + body


class _Counted(asyncio.Protocol):
    """aiohttp's protocol, counted while its connection lives."""

    def __init__(self, inner: asyncio.Protocol, limit: ConnectionLimit) -> None:
        self._inner, self._limit = inner, limit

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._limit.live -= 1
        self._inner.connection_lost(exc)


CLIENT_GONE_STATUS = 499  # nginx's "client closed request": what an access log shows


def client_gone(request: web.BaseRequest, error: BaseException) -> bool:
    """Whether ``error`` is the client having left: its connection reset or closed while
    its request was read (aiohttp raises ConnectionResetError from the body's stream) -- not
    a reset of some other connection (the relay's upstream) while the client still waits."""
    transport = request.transport
    return isinstance(error, ConnectionResetError) and (transport is None or transport.is_closing())


def gone_response() -> web.Response:
    """What a handler returns for a client that left: nothing reaches it (aiohttp drops the
    write to a closed connection quietly), the access log shows 499."""
    return web.Response(status=CLIENT_GONE_STATUS)


class _Refused(asyncio.Protocol):
    def __init__(self, answer: bytes) -> None:
        self._answer = answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self._answer)  # type: ignore[attr-defined]
        transport.close()


class ConnectionLimit:
    """A protocol factory around aiohttp's that refuses connections past ``max_connections``
    (the refusal names ``command``: ``engine serve`` or ``engine relay``)."""

    def __init__(self, server: Any, max_connections: int, command: str) -> None:
        self._server = server
        self.max_connections = max_connections
        self.live = 0
        self.refused = 0
        self._answer = _refusal(command, max_connections)

    def __call__(self) -> asyncio.Protocol:
        if self.live >= self.max_connections:
            self.refused += 1
            return _Refused(self._answer)
        self.live += 1
        return _Counted(self._server(), self)


class LimitedSite(web.TCPSite):
    """A TCP site whose connections go through a :class:`ConnectionLimit`."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, max_connections: int,
                 command: str = "engine serve", ssl_context: ssl.SSLContext | None = None,
                 handshake_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S) -> None:  # fmt: skip
        super().__init__(runner, host, port, ssl_context=ssl_context)
        self._max_connections = max_connections
        # a TLS client that connects and never finishes its handshake holds a connection of
        # the cap as one trickling its request head does: cut at the same bound (asyncio's
        # default is 60 s)
        self._handshake_timeout_s = handshake_timeout_s
        self._command = command
        self.limit: ConnectionLimit | None = None

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        assert self._runner.server is not None
        self.limit = ConnectionLimit(self._runner.server, self._max_connections, self._command)
        self._server = await asyncio.get_running_loop().create_server(
            self.limit, self._host, self._port, reuse_address=True, ssl=self._ssl_context,
            ssl_handshake_timeout=self._handshake_timeout_s if self._ssl_context else None,
        )
