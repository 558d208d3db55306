"""The relay's aiohttp application: ingest routes into an :class:`engine.Engine`, a
pass-through proxy for everything else, ``/metrics``; start, serve until a signal, stop."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
import time
from typing import Any

import aiohttp
from aiohttp import web

from engine.common import _metrics
from engine.common._config import set_outside_arguments
from engine.common._http import https_context
from engine.common._redact import redact_url
from engine.producer._engine import Engine
from engine.relay import _routes
from engine.relay._proxy import proxy, server_info
from engine.relay._state import RELAY, RelayState
from engine.server._auth import CURRENT_GRANT, KeyRing, check_bind
from engine.server._body import DEFAULT_MAX_BODY_BYTES, ApiError, error_response
from engine.server._connections import (
    DEFAULT_HEADER_TIMEOUT_S,
    LimitedSite,
    client_gone,
    gone_response,
)
from engine.server._drain import DRAIN, Drain
from engine.server._drain import stop as drain_and_stop
from engine.server._limits import DEFAULT_MAX_CONNECTIONS
from engine.server._origin import origin_middleware
from engine.server._tls import server_context, server_url

log = logging.getLogger("engine.relay")
RELAY_PROJECT = "relay/relay"  # the engine needs a default; every relayed item names its own
# One process writes everything the relay takes into one ring, and a record stays there
# until the upstream acknowledged it: the ring is all the relay can have in flight. 64 MiB
# (unless set) instead of a producer's 16: toward an upstream 300 ms away, 7.9k -> 11.6k
# calls/s (docs/configuration.md, "The relay").
RELAY_RING_BYTES = 64 << 20
_SUMMARY_COUNTERS = ("items_acked", "spooled_items", "dead_letters", "undelivered")
# on SIGTERM or SIGINT, how long the requests in progress may take to finish (at most half
# of sigterm_timeout_s): a body still arriving, a proxied answer from the upstream
_DRAIN_MAX_S = 5.0
_PROXY_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=10.0, sock_read=300.0)


@web.middleware
async def _json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except ConnectionResetError as exc:
        if not client_gone(request, exc):
            raise
        request.app[RELAY].counters.clients_gone += 1
        return gone_response()
    except ApiError as exc:
        response = error_response(exc.status, exc.reason, exc.headers)
        if exc.status in (408, 413):
            response.force_close()  # the rest of the body is unread
        return response


# the relay's own liveness, for a load balancer's probe (which carries no key); a key that
# is sent is still checked
_OPEN_ROUTES = frozenset({("GET", "/health"), ("HEAD", "/health")})


def _auth_middleware(keys: KeyRing) -> Any:
    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        CURRENT_GRANT.set(keys.grant_for(request.headers.get("Authorization"),
                                         (request.method, request.path), _OPEN_ROUTES))
        return await handler(request)

    return auth


async def _health(request: web.Request) -> web.Response:
    """This relay serves (its own, not the upstream's: every other path is proxied)."""
    return web.json_response({"status": "ok", "role": "relay"})


async def _metrics_handler(request: web.Request) -> web.Response:
    return _metrics.response(request.app[RELAY].metrics())


def build_app(engine: Engine, upstream: str, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
              keys: KeyRing | None = None) -> web.Application:
    """With ``keys`` every route needs one of them; ingest items must name projects the key
    may write (they are delivered under the relay's own upstream key); proxied routes pass
    the client's own ``Authorization`` upstream, which checks it again. Every route refuses
    other websites' pages and, without keys, names but loopback's, as engine serve does."""
    drain = Drain("engine relay")  # outermost: a request refused while stopping reads nothing
    middlewares = [drain.middleware, _json_errors,
                   origin_middleware("engine relay", loopback_only=keys is None)]
    middlewares += [_auth_middleware(keys)] if keys else []
    app = web.Application(middlewares=middlewares, client_max_size=max_body_bytes)
    app[RELAY] = RelayState(engine, upstream, max_body_bytes)
    app[DRAIN] = drain
    app.add_routes(_routes.routes)
    app.router.add_get("/metrics", _metrics_handler)
    app.router.add_get("/health", _health)
    app.router.add_get("/server_info", server_info)
    app.router.add_route("*", "/{tail:.*}", proxy)
    app.cleanup_ctx.append(_client_session)
    return app


async def _client_session(app: web.Application) -> Any:
    state = app[RELAY]
    # auto_decompress=False: bodies pass through exactly as the upstream encoded them
    # proxy and CAs as every outbound session takes them (engine.common._http), netrc unread
    state.session = aiohttp.ClientSession(
        auto_decompress=False, timeout=_PROXY_TIMEOUT, proxy=state.route.url,
        connector=aiohttp.TCPConnector(ssl=https_context(state.upstream) or True))
    yield
    await state.session.close()
    await asyncio.to_thread(state.writer.close)


async def start_relay(engine: Engine, upstream: str, host: str = "127.0.0.1", port: int = 0,
                      max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                      keys: KeyRing | None = None,
                      max_connections: int = DEFAULT_MAX_CONNECTIONS,
                      tls: ssl.SSLContext | None = None) -> tuple[web.AppRunner, str]:
    """Serve on the running loop; returns the runner (``await runner.cleanup()``) and URL.
    Without ``keys`` only a loopback ``host`` is accepted; with ``tls``
    (:func:`engine.server._tls.server_context`) it serves HTTPS."""
    check_bind("engine relay", host, keys)
    app = build_app(engine, upstream, max_body_bytes, keys)
    # bodies are read with the size-capped decompression of engine.server._body
    runner = web.AppRunner(app, access_log=None, handle_signals=False, auto_decompress=False,
                           keepalive_timeout=DEFAULT_HEADER_TIMEOUT_S)  # fmt: skip
    await runner.setup()
    # bounded as engine serve is (engine.server._connections)
    site = LimitedSite(runner, host, port, max_connections, "engine relay", ssl_context=tls)
    try:
        await site.start()
    except OSError:  # the port is taken: close the proxy's client session with the app
        await runner.cleanup()
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    return runner, server_url(bound_host, bound_port, tls is not None)


async def relay_until_signal(engine: Engine, upstream: str, host: str, port: int,
                             max_body_bytes: int, keys: KeyRing | None = None,
                             max_connections: int = DEFAULT_MAX_CONNECTIONS,
                             tls: ssl.SSLContext | None = None) -> tuple[int, float]:
    """Serve until SIGTERM or SIGINT; (that signal, when: monotonic)."""
    stop = asyncio.Event()
    stopped_by: list[tuple[int, float]] = []
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if not stopped_by:
            stopped_by.append((signum, time.monotonic()))
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    runner, url = await start_relay(engine, upstream, host, port, max_body_bytes, keys,
                                    max_connections, tls)
    # the URL line is the readiness signal (printed once signals are handled)
    print(f"engine relay: listening on {url} -> {redact_url(engine.config.url)}", flush=True)
    print(check_bind("engine relay", host, keys, "GET /health"), flush=True)
    try:
        await stop.wait()
    finally:
        # the requests in progress finish (bodies still arriving, proxied answers), new ones
        # are answered 503: before, aiohttp's cleanup dropped what arrived of a body and
        # waited its 60 s for the request, past the SIGKILL that follows SIGTERM, with the
        # ring's calls undelivered. Half the SIGTERM budget at most: delivery needs the rest
        await drain_and_stop(runner, min(_DRAIN_MAX_S, engine.config.sigterm_timeout_s / 2))
    return stopped_by[0]


def run_relay(upstream: str, host: str = "127.0.0.1", port: int = 0,
              max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, config_file: str | None = None,
              keys: KeyRing | None = None, max_connections: int = DEFAULT_MAX_CONNECTIONS,
              tls_cert: str | None = None, tls_key: str | None = None,
              **config: Any) -> dict[str, Any]:
    """Blocking ``engine relay``: serve until SIGTERM/SIGINT, then deliver what is in the
    ring (within ``shutdown_timeout_s``; after SIGTERM, within what is left of
    ``sigterm_timeout_s`` if less: SIGKILL follows SIGTERM after a grace period, and the
    relay has acknowledged these calls to its clients) and return the engine's final stats."""
    import uvloop

    config.setdefault("project", RELAY_PROJECT)
    if "ring_bytes" not in config and not set_outside_arguments("ring_bytes", config_file):
        config["ring_bytes"] = RELAY_RING_BYTES
    check_bind("engine relay", host, keys)  # before the engine starts its sender
    tls = server_context(tls_cert, tls_key)  # so is a bad certificate or key
    if port:  # a port already taken is said before the engine starts (and stops) a sender
        socket.create_server((host, port)).close()
    with Engine(url=upstream, config_file=config_file, **config) as engine:
        signum, at_s = uvloop.run(relay_until_signal(engine, upstream, host, port,
                                                     max_body_bytes, keys, max_connections,
                                                     tls))
        cfg = engine.config
        timeout_s = cfg.shutdown_timeout_s
        if signum == signal.SIGTERM:
            timeout_s = min(timeout_s, max(0.0, cfg.sigterm_timeout_s
                                           - (time.monotonic() - at_s)))
        stats = engine.close(timeout_s)
    log.info("relay stopped", extra={k: stats.get(k, 0) for k in _SUMMARY_COUNTERS})
    return stats
