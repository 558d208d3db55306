"""The relay's ingest routes: the real server's request and response shapes, answered once
the items are in the engine's ring (from where the sender delivers, retries and spools)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from engine.common._errors import Closed, ConfigError, PayloadTooLarge, RingFull
from engine.relay._state import RELAY, RelayState
from engine.relay._writer import CallItem
from engine.server._auth import CURRENT_GRANT
from engine.server._body import ApiError, check_same_project, fill_ids, path_project, read_body
from engine.server._ingest_models import (
    RawBatch,
    RawCallEndReq,
    RawCallsCompleteReq,
    RawCallStartReq,
    RawEndBatchItem,
    decode_ingest,
)
from engine.server._reply import ok
from engine.server._state import check_project_id
from engine.server._store_guard import check_project_name

routes = web.RouteTableDef()
_RETRY_AFTER_S = "1"



async def _decode(request: web.Request, type_: type) -> Any:
    """The body as the server's raw ingest model: checked as the server checks it, its
    JSON-valued fields kept as sent (the ring gets them as they are)."""
    state = request.app[RELAY]
    body = await read_body(request, state.max_body_bytes)
    state.counters.ingest_body_bytes += len(body)
    return decode_ingest(body, type_)


async def _enqueue(state: RelayState, items: list[CallItem]) -> None:
    """Into the ring, or an error answer a client knows how to handle (retry or give up).
    Every item must name a project the upstream takes writes to (checked before any item
    is written: the request is refused whole), and with keys one the client's key may
    write: the relay delivers under its own upstream key, so this is where a client's
    rights are kept."""
    grant = CURRENT_GRANT.get()
    for project_id in sorted({item.project_id for item in items}):
        check_project_name(project_id)
        if grant is not None:
            grant.check(project_id, write=True)
    try:
        await state.writer.write(items)
    except RingFull as exc:
        state.counters.rejected_full += 1
        raise ApiError(503, f"relay is full, retry later: {exc}", {"Retry-After": _RETRY_AFTER_S}) from None
    except PayloadTooLarge as exc:
        raise ApiError(413, str(exc)) from None
    except Closed:
        raise ApiError(503, "relay is shutting down", {"Retry-After": _RETRY_AFTER_S}) from None
    except (ConfigError, ValueError) as exc:
        # ids the engine cannot carry (not UUIDs), or a malformed project id
        raise ApiError(422, f"invalid call item: {exc}") from None
    state.counters.count_items(items)


@routes.post("/call/start")
async def call_start(request: web.Request) -> web.Response:
    req = await _decode(request, RawCallStartReq)
    check_project_id(req.start.project_id, "start.project_id")
    ids = fill_ids(req.start)
    await _enqueue(request.app[RELAY], [req.start])
    return ok(ids)


@routes.post("/call/end")
async def call_end(request: web.Request) -> web.Response:
    req = await _decode(request, RawCallEndReq)
    check_project_id(req.end.project_id, "end.project_id")
    await _enqueue(request.app[RELAY], [req.end])
    return ok({})


@routes.post("/call/upsert_batch")
async def call_upsert_batch(request: web.Request) -> web.Response:
    req = await _decode(request, RawBatch)
    items: list[CallItem] = []
    results: list[dict[str, str]] = []
    for i, entry in enumerate(req.batch):
        if isinstance(entry, RawEndBatchItem):
            check_project_id(entry.req.end.project_id, f"batch[{i}].req.end.project_id")
            items.append(entry.req.end)
            results.append({})
        else:
            check_project_id(entry.req.start.project_id, f"batch[{i}].req.start.project_id")
            results.append(fill_ids(entry.req.start))
            items.append(entry.req.start)
    await _enqueue(request.app[RELAY], items)
    return ok({"res": results})


@routes.post("/v2/{entity}/{project}/calls/complete")
async def calls_complete(request: web.Request) -> web.Response:
    req = await _decode(request, RawCallsCompleteReq)
    project_id = path_project(request)
    for i, call in enumerate(req.batch):
        check_same_project(call.project_id, project_id, f"batch[{i}].project_id")
    await _enqueue(request.app[RELAY], list(req.batch))
    return ok({})


@routes.post("/v2/{entity}/{project}/call/start")
async def call_start_v2(request: web.Request) -> web.Response:
    req = await _decode(request, RawCallStartReq)
    check_same_project(req.start.project_id, path_project(request), "start.project_id")
    ids = fill_ids(req.start)
    await _enqueue(request.app[RELAY], [req.start])
    return ok(ids)


@routes.post("/v2/{entity}/{project}/call/end")
async def call_end_v2(request: web.Request) -> web.Response:
    req = await _decode(request, RawCallEndReq)
    check_same_project(req.end.project_id, path_project(request), "end.project_id")
    await _enqueue(request.app[RELAY], [req.end])
    return ok({})
