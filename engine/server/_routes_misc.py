"""Handshake and introspection routes: server info, health, counters.

(``/obj/create`` and ``/file/create``, which ``weave.init()`` needs before its calls can
name their op, live with the other object and file routes in ``_routes_objects`` and
``_routes_files``.)
"""

from __future__ import annotations

import logging

import msgspec
from aiohttp import web

from engine.common._machine import machine_token
from engine.common._version import __version__
from engine.server._body import ACCEPTED_ENCODINGS
from engine.server._reply import ok
from engine.server._state import state_of
from engine.wire.query import ServerInfoRes

routes = web.RouteTableDef()
_log = logging.getLogger("engine.server")
# the oldest weave client this server accepts: it does not turn any client away
MIN_WEAVE_VERSION = "0.0.1"


@routes.get("/server_info")
async def server_info(request: web.Request) -> web.Response:
    info = ServerInfoRes(
        min_required_weave_python_version=MIN_WEAVE_VERSION,
        trace_server_version=f"engine-{__version__}",
        accepts_encodings=list(ACCEPTED_ENCODINGS),
        machine=machine_token(),
        store_id=await _store_id(request),
        accepts_upsert_batch=True,
    )
    return ok(info)


async def _store_id(request: web.Request) -> str | None:
    """The store's id, asked once per server (it never changes under a running one); None
    while the store cannot answer: weave.init asks /server_info and must get an answer."""
    state = state_of(request)
    if state.store_id is None:
        try:
            state.store_id = await state.store.store_id()
        except Exception as exc:  # noqa: BLE001 - a store in trouble: the rest still answers
            _log.debug("engine serve: the store's id is not readable now: %s", exc)
    return state.store_id


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "store": state_of(request).store.kind})


@routes.get("/ready")
async def ready(request: web.Request) -> web.Response:
    """Readiness, for a load balancer or an orchestrator: 200 once the store answers a
    trivial query, else its error (503 with the reason while a ClickHouse server cannot be
    reached). ``/health`` says only that this process serves."""
    store = state_of(request).store
    await store.ping()
    return web.json_response({"status": "ready", "store": store.kind})


@routes.get("/stats")
async def stats(request: web.Request) -> web.Response:
    state = state_of(request)
    body = {"store": state.store.kind, **msgspec.structs.asdict(state.counters)}
    return web.json_response(body)
