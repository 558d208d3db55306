"""A small real reverse proxy on loopback for the root-path tests: what nginx does with
``location /engine/ { proxy_pass http://UPSTREAM/; }`` (``strip=True``) or
``proxy_pass http://UPSTREAM;`` (``strip=False``), on its own event loop thread, port 0.

As nginx by default: ``Host`` is the upstream's own (``$proxy_host``), ``/engine`` alone is
redirected to ``/engine/``, any other path is the proxy's 404, bodies stream both ways.
As the configurations of docs/serve.md ("Behind a reverse proxy") add: ``X-Forwarded-For``,
``-Proto``, ``-Host`` and ``-Prefix``, and the browser's ``Origin`` mapped from the proxy's
own origin to the upstream's (any other origin passes unchanged, for the server to refuse).
It keeps each request's path as it came and as it went on.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web
from yarl import URL

from tests.loop_thread import LoopThread

# RFC 9110 §7.6.1 connection-specific headers, and those the proxy sets itself
_DROPPED = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                      "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length"})


class ReverseProxy(LoopThread):
    def __init__(self, upstream: str, prefix: str = "/engine", strip: bool = True) -> None:
        super().__init__()
        self.upstream, self.prefix, self.strip = URL(upstream), prefix, strip
        self.paths: list[tuple[str, str]] = []  # (path asked of the proxy, path sent upstream)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def _stop(self) -> None:
        assert self._runner is not None and self._session is not None
        await self._runner.cleanup()
        await self._session.close()

    def _upstream_origin(self) -> str:
        return str(self.upstream.origin())

    def _headers(self, request: web.Request) -> dict[str, str]:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROPPED}
        headers.update({"Host": self.upstream.raw_authority,  # nginx: $proxy_host
                        "X-Forwarded-For": request.remote or "", "X-Forwarded-Proto": "http",
                        "X-Forwarded-Host": request.host, "X-Forwarded-Prefix": self.prefix})
        if request.headers.get("Origin") == f"http://{request.host}":  # the proxy's own page
            headers["Origin"] = self._upstream_origin()
        return headers

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        path = request.rel_url.raw_path
        if path == self.prefix:
            raise web.HTTPMovedPermanently(self.prefix + "/")
        if not path.startswith(self.prefix + "/"):
            raise web.HTTPNotFound(text="the proxy's own 404")
        sent = path[len(self.prefix):] if self.strip else path
        self.paths.append((path, sent))
        query = request.rel_url.raw_query_string
        target = URL(self._upstream_origin() + sent + (f"?{query}" if query else ""), encoded=True)
        assert self._session is not None
        async with self._session.request(
                request.method, target, headers=self._headers(request),
                data=request.content if request.body_exists else None,
                allow_redirects=False) as answer:
            response = web.StreamResponse(status=answer.status, headers={
                k: v for k, v in answer.headers.items() if k.lower() not in _DROPPED})
            await response.prepare(request)
            async for chunk in answer.content.iter_chunked(64 << 10):
                await response.write(chunk)
            await response.write_eof()
            return response
