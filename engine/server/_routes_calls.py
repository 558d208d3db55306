"""Call routes: ingest (start, end, upsert_batch, v2 complete/start/end) and reads."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

import msgspec
from aiohttp import web

from engine.server._body import ApiError, check_same_project, fill_ids, path_project
from engine.server._ingest_models import (
    RawBatch,
    RawCallEndReq,
    RawCallsCompleteReq,
    RawCallStartReq,
    RawEndBatchItem,
)
from engine.server._query_expr import InvalidExpr, compile_query
from engine.server._reply import ok, stream_jsonl
from engine.server._state import check_project_id, state_of
from engine.server._store import CallsQuery, InvalidQuery
from engine.wire.query import (
    CallReadReq,
    CallsDeleteReq,
    CallsFilter,
    CallsQueryReq,
    CallsQueryStatsReq,
    CallUpdateReq,
)

routes = web.RouteTableDef()
_json = msgspec.json.Encoder()


# -- ingest -------------------------------------------------------------------------------
# Bodies decode into the raw models of _ingest_models: the JSON-valued fields are checked,
# not built into Python objects, and reach the store as the text the client sent.


@routes.post("/call/start")
async def call_start(request: web.Request) -> web.Response:
    state = state_of(request)
    req = await state.decode_ingest(request, RawCallStartReq)
    check_project_id(req.start.project_id, "start.project_id")
    ids = fill_ids(req.start)
    await state.store.insert_calls([req.start], [], [])
    state.counters.calls_started += 1
    return ok(ids)


@routes.post("/call/end")
async def call_end(request: web.Request) -> web.Response:
    state = state_of(request)
    req = await state.decode_ingest(request, RawCallEndReq)
    check_project_id(req.end.project_id, "end.project_id")
    await state.store.insert_calls([], [req.end], [])
    state.counters.calls_ended += 1
    return ok({})


@routes.post("/call/upsert_batch")
async def call_upsert_batch(request: web.Request) -> web.Response:
    """The seed's Batch of start/end items, stored in one transaction."""
    state = state_of(request)
    req = await state.decode_ingest(request, RawBatch)
    starts, ends, results = [], [], []
    for i, item in enumerate(req.batch):
        if isinstance(item, RawEndBatchItem):
            check_project_id(item.req.end.project_id, f"batch[{i}].req.end.project_id")
            ends.append(item.req.end)
            results.append({})
        else:
            check_project_id(item.req.start.project_id, f"batch[{i}].req.start.project_id")
            results.append(fill_ids(item.req.start))
            starts.append(item.req.start)
    await state.store.insert_calls(starts, ends, [])
    state.counters.calls_started += len(starts)
    state.counters.calls_ended += len(ends)
    return ok({"res": results})


@routes.post("/v2/{entity}/{project}/calls/complete")
async def calls_complete(request: web.Request) -> web.Response:
    state = state_of(request)
    req = await state.decode_ingest(request, RawCallsCompleteReq)
    project_id = path_project(request)
    for i, call in enumerate(req.batch):
        check_same_project(call.project_id, project_id, f"batch[{i}].project_id")
    await state.store.insert_calls([], [], req.batch)
    state.counters.calls_complete += len(req.batch)
    return ok({})


@routes.post("/v2/{entity}/{project}/call/start")
async def call_start_v2(request: web.Request) -> web.Response:
    state = state_of(request)
    req = await state.decode_ingest(request, RawCallStartReq)
    check_same_project(req.start.project_id, path_project(request), "start.project_id")
    ids = fill_ids(req.start)
    await state.store.insert_calls([req.start], [], [])
    state.counters.calls_started += 1
    return ok(ids)


@routes.post("/v2/{entity}/{project}/call/end")
async def call_end_v2(request: web.Request) -> web.Response:
    state = state_of(request)
    req = await state.decode_ingest(request, RawCallEndReq)
    check_same_project(req.end.project_id, path_project(request), "end.project_id")
    await state.store.insert_calls([], [req.end], [])
    state.counters.calls_ended += 1
    return ok({})


# -- reads and edits ----------------------------------------------------------------------


def _calls_query(req: CallsQueryReq | CallsQueryStatsReq) -> CallsQuery:
    """The store's query for a request, its ``$expr`` checked first (422 naming the part)."""
    if req.query is not None:
        try:
            compile_query(req.query)
        except InvalidExpr as exc:
            raise ApiError(422, str(exc)) from None
    return CallsQuery(
        project_id=req.project_id, filter=req.filter, query=req.query,
        sort_by=tuple(getattr(req, "sort_by", None) or ()), limit=req.limit,
        offset=getattr(req, "offset", None) or 0,
    )  # fmt: skip


async def _first_page(pages: AsyncIterator[list[dict]]) -> list[dict]:
    """The first page, so that a query the store cannot run is a 422 before any byte."""
    try:
        return await anext(pages, [])
    except InvalidQuery as exc:
        raise ApiError(422, str(exc)) from None


@routes.post("/call/read")
async def call_read(request: web.Request) -> web.Response:
    state = state_of(request)
    req = await state.decode(request, CallReadReq)
    query = CallsQuery(project_id=req.project_id, filter=CallsFilter(call_ids=[req.id]), limit=1)
    page = await _first_page(state.store.query_calls(query))
    return ok({"call": page[0] if page else None})


@routes.post("/calls/stream_query")
async def calls_stream_query(request: web.Request) -> web.StreamResponse:
    """One CallSchema per line, read from one store cursor a chunk at a time."""
    state = state_of(request)
    req = await state.decode(request, CallsQueryReq)
    return await stream_jsonl(request, _query_errors(state.store.query_calls(_calls_query(req))))


async def _query_errors(pages: AsyncGenerator[list[dict], None]) -> AsyncGenerator[list[dict], None]:
    """The pages, with a query the store cannot run as a 422 (raised before any byte)."""
    async with contextlib.aclosing(pages):
        try:
            async for page in pages:
                yield page
        except InvalidQuery as exc:
            raise ApiError(422, str(exc)) from None


@routes.post("/calls/query_stats")
async def calls_query_stats(request: web.Request) -> web.Response:
    state = state_of(request)
    req = await state.decode(request, CallsQueryStatsReq)
    try:
        count = await state.store.count_calls(_calls_query(req))
    except InvalidQuery as exc:
        raise ApiError(422, str(exc)) from None
    return ok({"count": count})


@routes.post("/calls/delete")
async def calls_delete(request: web.Request) -> web.Response:
    state = state_of(request)
    req = await state.decode(request, CallsDeleteReq)
    deleted = await state.store.delete_calls(req.project_id, req.call_ids)
    return ok({"num_deleted": len(deleted)})


@routes.post("/call/update")
async def call_update(request: web.Request) -> web.Response:
    state = state_of(request)
    req = await state.decode(request, CallUpdateReq)
    if not await state.store.set_call_display_name(req.project_id, req.call_id, req.display_name):
        raise ApiError(404, f"call {req.call_id!r} not found in project {req.project_id!r}")
    return ok({})
