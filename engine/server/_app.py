"""The aiohttp application of ``engine serve``: middlewares, route tables, start and stop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import msgspec
from aiohttp import web

from engine.common import _metrics
from engine.common._errors import ConfigError
from engine.server import (
    _graphql,
    _root_path,
    _routes_actions,
    _routes_calls,
    _routes_completions,
    _routes_costs,
    _routes_eval_runs,
    _routes_feedback,
    _routes_files,
    _routes_labels,
    _routes_misc,
    _routes_objects,
    _routes_otel,
    _routes_predictions,
    _routes_refs,
    _routes_retention,
    _routes_tables,
    _routes_threads,
    _routes_ui,
    _routes_unsupported,
    _routes_usage,
    _routes_v2,
)
from engine.server._auth import CURRENT_GRANT, Grant, KeyRing, check_bind
from engine.server._body import DEFAULT_MAX_BODY_BYTES, ApiError, error_response
from engine.server._connections import (
    DEFAULT_HEADER_TIMEOUT_S,
    LimitedSite,
    client_gone,
    gone_response,
)
from engine.server._count_store import CountStore
from engine.server._drain import DRAIN, Drain
from engine.server._drain import stop as drain_and_stop
from engine.server._limits import DEFAULT_MAX_CONNECTIONS, DEFAULT_SHUTDOWN_TIMEOUT_S
from engine.server._op_watch import GRACE_S, OpWatch
from engine.server._origin import origin_middleware
from engine.server._retention import DEFAULT_INTERVAL_S, Pruner
from engine.server._sqlite_db import default_db_path
from engine.server._sqlite_store import SQLiteStore
from engine.server._state import STATE, ServerState
from engine.server._store import Store
from engine.server._store_guard import GuardedStore
from engine.server._tls import server_context, server_url
from engine.server.clickhouse._connect import is_clickhouse_url, parse_store_url

# "sqlite", "count", or a ClickHouse URL (clickhouse://USER@HOST:PORT/DB, chdb:///FOLDER)
StoreKind = Literal["sqlite", "count"] | str


def open_store(kind: StoreKind, db_path: Path | None, password_file: Path | None = None) -> Store:
    if kind == "count":
        return CountStore()
    if kind == "sqlite":
        return SQLiteStore(db_path or default_db_path())
    if is_clickhouse_url(kind):
        from engine.server.clickhouse import ClickHouseStore  # needs the 'clickhouse' extra

        return ClickHouseStore(parse_store_url(kind, password_file))
    raise ConfigError(
        "store",
        f"unknown store {kind!r}; choose 'sqlite', 'count', "
        "clickhouse://USER@HOST:PORT/DB or chdb:///FOLDER"
    )


@web.middleware
async def _json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error leaves as JSON ``{"reason": …}``, including the router's 404 and 405."""
    try:
        return await handler(request)
    except ConnectionResetError as exc:
        if not client_gone(request, exc):
            raise
        request.app[STATE].counters.clients_gone += 1
        return gone_response()
    except ApiError as exc:
        counters = request.app[STATE].counters
        if exc.status == 503:
            counters.store_unavailable += 1
        elif exc.status == 507:
            counters.store_full += 1
        else:
            counters.rejected_requests += 1
        response = error_response(exc.status, exc.reason, exc.headers)
        if exc.status in (408, 413):
            # the rest of the body is unread: the connection cannot be reused for another request
            response.force_close()
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return error_response(exc.status, f"{exc.reason}: {request.method} {request.path}", headers)


# what monitoring probes call, without a key: liveness and the store kind, no project's data
OPEN_ROUTES = frozenset({("GET", "/health"), ("HEAD", "/health"), ("GET", "/ready"),
                         ("HEAD", "/ready")})


def _auth_middleware(keys: KeyRing, open_routes: frozenset[tuple[str, str]]) -> Any:
    """Every route but ``open_routes`` (:data:`OPEN_ROUTES`, under the root path too) needs
    a key; the key's grant holds for the rest of the request, where the guarded store checks
    each project it touches against it. An open route without a key runs with
    :data:`NO_KEY`, which reaches no project."""

    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        CURRENT_GRANT.set(keys.grant_for(request.headers.get("Authorization"),
                                         (request.method, request.path), open_routes))
        return await handler(request)

    return auth


async def _serve_metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: the server's request and call counters as Prometheus text."""
    counters = msgspec.structs.asdict(request.app[STATE].counters)
    return _metrics.response({"server": counters})


def key_ring(api_key: str | None, keys: KeyRing | None) -> KeyRing | None:
    """``keys``, or one key for every project when only ``api_key`` is given."""
    if api_key is None:
        return keys
    return KeyRing({api_key: Grant("api_key", ("*",), True)})


def checked_root_path(root_path: str) -> str:
    """The root path normalised (``/engine``, or ``""``); ConfigError naming what is wrong."""
    try:
        return _root_path.normalise(root_path)
    except ValueError as exc:
        raise ConfigError("root_path", str(exc)) from None


# request Structs of routes the wire registry (engine.wire.routes) does not list
REQUEST_TYPES = {**_routes_labels.REQUEST_TYPES, **_routes_v2.REQUEST_TYPES,
                 **_routes_eval_runs.REQUEST_TYPES, **_routes_usage.REQUEST_TYPES,
                 **_routes_predictions.REQUEST_TYPES, **_routes_retention.REQUEST_TYPES,
                 **_routes_ui.REQUEST_TYPES}  # fmt: skip
# POST routes that read no body (weave's client sends none)
NO_BODY_ROUTES = frozenset(_routes_predictions.NO_BODY)


def build_app(
    store: Store,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    api_key: str | None = None,
    keys: KeyRing | None = None,
    retention_days: int | None = None,
    retention_interval_s: float = DEFAULT_INTERVAL_S,
    missing_op_grace_s: float = GRACE_S,
    root_path: str = "",
) -> web.Application:
    """``retention_days``: how long calls of projects without their own retention are
    kept (None: until deleted); ``retention_interval_s``: how often calls past their
    retention are deleted (:mod:`engine.server._retention`); ``missing_op_grace_s``: how
    long after a call first names a weave op the server looks it up (:mod:`._op_watch`);
    ``root_path``: the path prefix of a reverse proxy in front (:mod:`._root_path`)."""
    root_path = checked_root_path(root_path)
    keys = key_ring(api_key, keys)
    # no other website's page, and without keys (loopback only) no name but loopback's
    drain = Drain("engine serve")  # outermost: a request refused while stopping reads nothing
    middlewares = [drain.middleware, _json_errors,
                   origin_middleware("engine serve", loopback_only=keys is None)]
    middlewares += [_auth_middleware(keys, _root_path.open_under(root_path, OPEN_ROUTES))] \
        if keys else []
    # bodies are read and limited by _body.read_body; aiohttp's own cap only guards request.read()
    app = web.Application(middlewares=middlewares, client_max_size=max_body_bytes)
    app[STATE] = ServerState(GuardedStore(store), max_body_bytes)
    app[DRAIN] = drain
    app[_routes_ui.ROOT_PATH] = root_path
    table = [web.get("/metrics", _serve_metrics)]
    for module in (_routes_misc, _routes_calls, _graphql, _routes_objects, _routes_tables,
                   _routes_refs, _routes_files, _routes_feedback, _routes_costs, _routes_otel,
                   _routes_threads, _routes_actions, _routes_completions, _routes_labels,
                   _routes_v2, _routes_eval_runs, _routes_predictions, _routes_usage,
                   _routes_retention, _routes_unsupported, _routes_ui):  # fmt: skip
        table += module.routes
    table += _routes_ui.PAGES  # the trace browser's pages: after every API route
    app.add_routes(table)
    if root_path:  # a request that arrives with the root path is served too
        app.add_routes(_root_path.under(root_path, table))
    app[_routes_retention.DEFAULT_DAYS] = retention_days
    pruner = Pruner(store, app[STATE].counters, retention_interval_s, retention_days)
    app.cleanup_ctx.append(functools.partial(_background, pruner.run))
    op_watch = app[STATE].op_watch = OpWatch(store, app[STATE].counters, missing_op_grace_s)
    app.cleanup_ctx.append(functools.partial(_background, op_watch.run))
    app.on_cleanup.append(_close_store)
    return app


async def _background(run: Callable[[], Awaitable[None]],
                      app: web.Application) -> AsyncIterator[None]:
    """A task for as long as the server runs: the retention pruner, the op watch."""
    task = asyncio.get_running_loop().create_task(run())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _close_store(app: web.Application) -> None:
    await app[STATE].store.close()


async def start_server(
    host: str = "127.0.0.1",
    port: int = 0,
    db_path: Path | str | None = None,
    store: StoreKind = "sqlite",
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    api_key: str | None = None,
    clickhouse_password_file: Path | str | None = None,
    keys: KeyRing | None = None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
    shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
    retention_days: int | None = None,
    retention_interval_s: float = DEFAULT_INTERVAL_S,
    missing_op_grace_s: float = GRACE_S,
    tls_cert: Path | str | None = None,
    tls_key: Path | str | None = None,
    root_path: str = "",
) -> tuple[web.AppRunner, str]:
    """Start serving on the running loop; returns the runner (``await runner.cleanup()``) and URL.
    With ``tls_cert`` and ``tls_key`` (PEM files; the key mode 0600) it serves HTTPS;
    with ``root_path`` (``/engine``) it is ready for a reverse proxy at that prefix.

    Without keys (``api_key`` or ``keys``) only a loopback ``host`` is accepted. Connections
    are capped and slow ones cut off (:mod:`engine.server._connections`). The runner's
    cleanup waits up to ``shutdown_timeout_s`` for the requests in progress, then cancels
    them."""
    check_bind("engine serve", host, key_ring(api_key, keys))
    checked_root_path(root_path)  # refused before the store opens, as a bad TLS pair is
    tls = server_context(tls_cert, tls_key)  # a bad pair is refused before the store opens
    password_file = Path(clickhouse_password_file) if clickhouse_password_file else None
    app = build_app(
        open_store(store, Path(db_path) if db_path else None, password_file),
        max_body_bytes=max_body_bytes,
        api_key=api_key,
        keys=keys,
        retention_days=retention_days,
        retention_interval_s=retention_interval_s,
        missing_op_grace_s=missing_op_grace_s,
        root_path=root_path,
    )
    # auto_decompress=False: aiohttp would inflate bodies without any size cap (a zip bomb
    # costs memory before a handler runs); _body.decompress inflates with the limit instead
    runner = web.AppRunner(app, access_log=None, handle_signals=False, auto_decompress=False,
                           keepalive_timeout=header_timeout_s,
                           shutdown_timeout=shutdown_timeout_s)  # fmt: skip
    await runner.setup()
    site = LimitedSite(runner, host, port, max_connections, ssl_context=tls,
                       handshake_timeout_s=header_timeout_s)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    return runner, server_url(bound_host, bound_port, tls is not None)



async def serve_until_signal(parent_pid: int | None = None, **options: Any) -> None:
    """Serve until SIGTERM or SIGINT (or, given ``parent_pid``, until that parent exits),
    then stop accepting, finish the requests in progress (new ones on open connections are
    answered 503: :mod:`engine.server._drain`), and close the store."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner, url = await start_server(**options)
    watch = None if parent_pid is None else loop.create_task(
        _stop_when_orphaned(parent_pid, stop))
    store = getattr(runner.app[STATE].store, "inner", runner.app[STATE].store)
    where = f" db={store.path}" if type(store) is SQLiteStore else ""
    if hasattr(store, "target"):  # ClickHouse: where, never the password
        where = f" {store.target.describe()}"
    # the URL line is the readiness signal: printed only once signals are handled
    print(f"engine serve: listening on {url} (store={store.kind}{where})", flush=True)
    print(check_bind("engine serve", options.get("host", "127.0.0.1"),
                     key_ring(options.get("api_key"), options.get("keys")),
                     "GET /health and /ready"),
          flush=True)  # fmt: skip
    if options.get("retention_days") is not None:
        print(f"engine serve: calls of projects without their own retention are deleted "
              f"{options['retention_days']} days after they start", flush=True)
    root = checked_root_path(options.get("root_path", ""))
    if root:
        print(f"engine serve: root path {root}: the trace browser builds its URLs under it, "
              f"for a reverse proxy that forwards {root}/ here (with the prefix stripped or "
              f"not); from this machine: {url}{root}/", flush=True)
    try:
        await stop.wait()
    finally:
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        await drain_and_stop(runner, options.get("shutdown_timeout_s",
                                                 DEFAULT_SHUTDOWN_TIMEOUT_S))
    print("engine serve: stopped", flush=True)


_PARENT_POLL_S = 0.5


async def _stop_when_orphaned(parent_pid: int, stop: asyncio.Event) -> None:
    """A server run by another process (``--parent-pid``: the demo, tests, benches) must
    not outlive it, however it dies (SIGKILL runs no clean-up): once it is gone this
    process is reparented, so ``getppid`` changes. Nothing is printed: the parent read this
    process's output, and that pipe may be closed now."""
    while os.getppid() == parent_pid:
        await asyncio.sleep(_PARENT_POLL_S)
    stop.set()


# A streamed read allocates a few containers per row (the call dict, its summary), nearly
# all freed by reference counting once its chunk is written. At the default threshold
# (700) the cyclic collector ran every ~150 rows and walked the chunk in flight again and
# again: ~1.4 us of the ~6 us of CPU per streamed row; at this one, ~0.1.
_GC_GEN0_THRESHOLD = 10_000


def run_server(**options: Any) -> None:
    """Blocking ``engine serve`` on uvloop (options as :func:`start_server`)."""
    import uvloop

    from engine.common._malloc import tune_for_large_buffers

    tune_for_large_buffers()  # this process is ours: keep megabyte bodies off fresh mmaps
    gc.set_threshold(_GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])

    uvloop.run(serve_until_signal(**options))
