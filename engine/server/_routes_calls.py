"""Call routes: ingest (start, end, upsert_batch, v2 complete/start/end) and reads."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

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
from engine.server._reply import ok
from engine.server._rows import InvalidQuery, Page, Selection, row_to_call
from engine.server._state import check_project_id, state_of
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
_QUERY_PAGE_ROWS = 1000


# -- ingest -------------------------------------------------------------------------------
# Bodies decode into the raw models of _ingest_models: the JSON-valued fields are checked,
# not built into Python objects, and reach the store as the text the client sent.


@routes.post("/call/start")
async def call_start(request: web.Request) -> web.Response:
    state = state_of(request)
    req = await state.decode_ingest(request, RawCallStartReq)
    check_project_id(req.start.project_id, "start.project_id")
    ids = fill_ids(req.start)
    await state.store.write_calls([req.start], [], [])
    state.counters.calls_started += 1
    return ok(ids)


@routes.post("/call/end")
async def call_end(request: web.Request) -> web.Response:
    state = state_of(request)
    req = await state.decode_ingest(request, RawCallEndReq)
    check_project_id(req.end.project_id, "end.project_id")
    await state.store.write_calls([], [req.end], [])
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
    await state.store.write_calls(starts, ends, [])
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
    await state.store.write_calls([], [], req.batch)
    state.counters.calls_complete += len(req.batch)
    return ok({})


@routes.post("/v2/{entity}/{project}/call/start")
async def call_start_v2(request: web.Request) -> web.Response:
    state = state_of(request)
    req = await state.decode_ingest(request, RawCallStartReq)
    check_same_project(req.start.project_id, path_project(request), "start.project_id")
    ids = fill_ids(req.start)
    await state.store.write_calls([req.start], [], [])
    state.counters.calls_started += 1
    return ok(ids)


@routes.post("/v2/{entity}/{project}/call/end")
async def call_end_v2(request: web.Request) -> web.Response:
    state = state_of(request)
    req = await state.decode_ingest(request, RawCallEndReq)
    check_same_project(req.end.project_id, path_project(request), "end.project_id")
    await state.store.write_calls([], [req.end], [])
    state.counters.calls_ended += 1
    return ok({})


# -- reads and edits ----------------------------------------------------------------------


def _selection(req: CallsQueryReq | CallsQueryStatsReq) -> Selection:
    try:
        return Selection(req.project_id, req.filter, getattr(req, "sort_by", None))
    except InvalidQuery as exc:
        raise ApiError(422, str(exc)) from None


def _predicate(req: CallsQueryReq | CallsQueryStatsReq) -> Callable[[dict], bool] | None:
    """The ``$expr`` query as a predicate over calls, evaluated after the SQL filter."""
    if req.query is None:
        return None
    try:
        return compile_query(req.query)
    except InvalidExpr as exc:
        raise ApiError(422, str(exc)) from None


def _decoded(call: dict[str, Any]) -> dict[str, Any]:
    """The call with its raw JSON fields (inputs, output, …) decoded, for evaluating $expr."""
    return {k: msgspec.json.decode(v) if isinstance(v, msgspec.Raw) else v for k, v in call.items()}


async def _matching_calls(store: Any, selection: Selection, predicate: Callable[[dict], bool],
                          offset: int, limit: int | None) -> AsyncIterator[list[dict]]:
    """Pages of calls passing ``predicate``, with offset and limit applied after it."""
    position = 0
    while limit is None or limit > 0:
        rows = await store.select_calls(selection, Page(limit=_QUERY_PAGE_ROWS, offset=position))
        position += len(rows)
        page = []
        for call in (row_to_call(r) for r in rows):
            if not predicate(_decoded(call)):
                continue
            if offset:
                offset -= 1
                continue
            page.append(call)
            if limit is not None:
                limit -= 1
                if not limit:
                    break
        if page:
            yield page
        if len(rows) < _QUERY_PAGE_ROWS:
            return


@routes.post("/call/read")
async def call_read(request: web.Request) -> web.Response:
    state = state_of(request)
    req = await state.decode(request, CallReadReq)
    rows = await state.store.select_calls(
        Selection(req.project_id, CallsFilter(call_ids=[req.id])), Page(limit=1)
    )
    return ok({"call": row_to_call(rows[0]) if rows else None})


@routes.post("/calls/stream_query")
async def calls_stream_query(request: web.Request) -> web.StreamResponse:
    """One CallSchema per line, read from the store a page at a time."""
    state = state_of(request)
    req = await state.decode(request, CallsQueryReq)
    selection, predicate = _selection(req), _predicate(req)
    response = web.StreamResponse(headers={"Content-Type": "application/jsonl"})
    await response.prepare(request)
    if predicate is not None:
        async for page in _matching_calls(state.store, selection, predicate, req.offset or 0,
                                          req.limit):
            await response.write(b"".join(_json.encode(call) + b"\n" for call in page))
        await response.write_eof()
        return response
    offset, remaining = req.offset or 0, req.limit
    while remaining is None or remaining > 0:
        want = _QUERY_PAGE_ROWS if remaining is None else min(remaining, _QUERY_PAGE_ROWS)
        rows = await state.store.select_calls(selection, Page(limit=want, offset=offset))
        if rows:
            await response.write(b"".join(_json.encode(row_to_call(r)) + b"\n" for r in rows))
        if len(rows) < want:
            break
        offset += len(rows)
        remaining = None if remaining is None else remaining - len(rows)
    await response.write_eof()
    return response


@routes.post("/calls/query_stats")
async def calls_query_stats(request: web.Request) -> web.Response:
    state = state_of(request)
    req = await state.decode(request, CallsQueryStatsReq)
    selection, predicate = _selection(req), _predicate(req)
    if predicate is None:
        count = await state.store.count_calls(selection)
    else:
        count = 0
        async for page in _matching_calls(state.store, selection, predicate, 0, req.limit):
            count += len(page)
    if req.limit is not None:
        count = min(count, req.limit)
    return ok({"count": count})


@routes.post("/calls/delete")
async def calls_delete(request: web.Request) -> web.Response:
    state = state_of(request)
    req = await state.decode(request, CallsDeleteReq)
    return ok({"num_deleted": await state.store.delete_calls(req.project_id, req.call_ids)})


@routes.post("/call/update")
async def call_update(request: web.Request) -> web.Response:
    state = state_of(request)
    req = await state.decode(request, CallUpdateReq)
    if not await state.store.update_display_name(req.project_id, req.call_id, req.display_name):
        raise ApiError(404, f"call {req.call_id!r} not found in project {req.project_id!r}")
    return ok({})
