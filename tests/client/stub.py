"""Loopback helpers for the client tests: a stub server with a custom handler, and a
recording proxy in front of ``engine serve`` (to count and inspect the requests sent).

Both run an aiohttp server on their own thread and event loop, bound to 127.0.0.1 port 0,
so blocking and asyncio clients can talk to them alike; both are context managers that
always stop the server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import zstandard
from aiohttp import web

from tests.loop_thread import LoopThread

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes  # decompressed


class StubServer(LoopThread):
    """Serves every request with ``handler``; records each request it receives."""

    def __init__(self, handler: Handler) -> None:
        super().__init__()
        self._handler = handler
        self.requests: list[Recorded] = []
        self._runner: web.AppRunner | None = None

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    async def _start(self) -> None:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._record_and_handle)
        await self._on_start()
        # bodies pass through as sent (the engine zstd-compresses toward servers that take it)
        self._runner = web.AppRunner(app, auto_decompress=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def _on_start(self) -> None:
        """Hook for subclasses that need loop-bound resources."""

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _record_and_handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        plain = body
        if request.headers.get("Content-Encoding") == "zstd":
            plain = zstandard.ZstdDecompressor().decompressobj().decompress(body)
        self.requests.append(Recorded(request.method, request.path_qs, dict(request.headers), plain))
        request._read_bytes = body  # let the handler read the body again
        return await self._handler(request)


class RecordingProxy(StubServer):
    """Forwards every request to ``upstream`` unchanged and records it."""

    def __init__(self, upstream: str) -> None:
        super().__init__(self._forward)
        self._upstream = upstream.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def _on_start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)

    async def _stop(self) -> None:
        await super()._stop()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        async with self._session.request(request.method, self._upstream + request.path_qs,
                                         data=await request.read(), headers=headers) as upstream:
            body = await upstream.read()
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
            return web.Response(status=upstream.status, body=body, headers=out)
