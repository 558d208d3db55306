"""Call routes: ingest (start, end, upsert_batch, v2 complete/start/end) and reads."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from engine.server._body import ApiError, check_same_project, fill_ids, path_project
from engine.server._calls_view import (
    FEEDBACK_FIELDS,
    add_costs,
    add_feedback,
    call_view,
    expand_refs,
    json_columns_read,
    selected_columns,
    stored_bytes,
)
from engine.server._ingest_models import (
    RawBatch,
    RawCallEndReq,
    RawCallsCompleteReq,
    RawCallStartReq,
    RawEndBatchItem,
)
from engine.server._query_expr import InvalidExpr, compile_query
from engine.server._reply import ok, stream_jsonl
from engine.server._routes_refs import parse_ref, resolve
from engine.server._routes_retention import retention_in_force
from engine.server._state import check_project_id, state_of
from engine.server._store import CallsQuery, DocsQuery, InvalidQuery, Store
from engine.server._store_guard import check_grant
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
    state.saw_starts([req.start])
    state.counters.calls_started += 1
    state.counters.requests_call_start += 1
    return ok(ids)


@routes.post("/call/end")
async def call_end(request: web.Request) -> web.Response:
    state = state_of(request)
    req = await state.decode_ingest(request, RawCallEndReq)
    check_project_id(req.end.project_id, "end.project_id")
    await state.store.insert_calls([], [req.end], [])
    state.counters.calls_ended += 1
    state.counters.requests_call_end += 1
    return ok({})


@routes.post("/call/upsert_batch")
async def call_upsert_batch(request: web.Request) -> web.Response:
    """The seed's Batch of start/end items, stored in one transaction."""
    state = state_of(request)
    req = await state.decode_ingest(request, RawBatch)
    if not req.batch:  # nothing to store (the store, under a key, refuses what names no project)
        return ok({"res": []})
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
    state.saw_starts(starts)
    state.counters.calls_started += len(starts)
    state.counters.calls_ended += len(ends)
    state.counters.requests_upsert_batch += 1
    return ok({"res": results})


@routes.post("/v2/{entity}/{project}/calls/complete")
async def calls_complete(request: web.Request) -> web.Response:
    state = state_of(request)
    req = await state.decode_ingest(request, RawCallsCompleteReq)
    project_id = path_project(request)
    if not req.batch:  # nothing to store; the key is checked against the path's project
        check_grant(project_id, write=True)
        return ok({})
    for i, call in enumerate(req.batch):
        check_same_project(call.project_id, project_id, f"batch[{i}].project_id")
    await state.store.insert_calls([], [], req.batch)
    state.saw_starts(req.batch)
    state.counters.calls_complete += len(req.batch)
    state.counters.requests_calls_complete += 1
    return ok({})


@routes.post("/v2/{entity}/{project}/call/start")
async def call_start_v2(request: web.Request) -> web.Response:
    state = state_of(request)
    req = await state.decode_ingest(request, RawCallStartReq)
    check_same_project(req.start.project_id, path_project(request), "start.project_id")
    ids = fill_ids(req.start)
    await state.store.insert_calls([req.start], [], [])
    state.saw_starts([req.start])
    state.counters.calls_started += 1
    state.counters.requests_call_start += 1
    return ok(ids)


@routes.post("/v2/{entity}/{project}/call/end")
async def call_end_v2(request: web.Request) -> web.Response:
    state = state_of(request)
    req = await state.decode_ingest(request, RawCallEndReq)
    check_same_project(req.end.project_id, path_project(request), "end.project_id")
    await state.store.insert_calls([], [req.end], [])
    state.counters.calls_ended += 1
    state.counters.requests_call_end += 1
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
        offset=getattr(req, "offset", None) or 0, json_columns=_json_columns(req),
    )  # fmt: skip


def _json_columns(req: CallsQueryReq | CallsQueryStatsReq) -> tuple[str, ...] | None:
    """What a stream's view shows of the stored JSON (``/calls/query_stats`` shows none)."""
    if isinstance(req, CallsQueryStatsReq):
        return ()
    keep = selected_columns(req.columns, bool(req.include_costs)) if req.columns else None
    return json_columns_read(keep, bool(req.include_storage_size))


async def _first_page(pages: AsyncIterator[list[dict]]) -> list[dict]:
    """The first page, so that a query the store cannot run is a 422 before any byte."""
    try:
        return await anext(pages, [])
    except InvalidQuery as exc:
        raise ApiError(422, str(exc)) from None


def _views(request: web.Request, req: CallsQueryReq | CallReadReq):
    """``page -> page`` as weave answers: derived summary, columns, costs, feedback, refs."""
    store = state_of(request).store
    columns = getattr(req, "columns", None)
    keep = selected_columns(columns, bool(req.include_costs)) if columns else None
    prices: list[dict[str, list[dict]]] = []

    async def view(page: list[dict]) -> list[dict]:
        sizes = [stored_bytes(call) for call in page] if req.include_storage_size else ()
        calls = [call_view(call, keep) for call in page]
        for call, size in zip(calls, sizes):
            call["storage_size_bytes"] = size
        if req.include_total_storage_size:
            await _add_trace_sizes(store, req.project_id, calls)
        if req.include_costs:
            if not prices:
                prices.append(await project_prices(store, req.project_id))
            add_costs(calls, prices[0])
        if getattr(req, "include_feedback", None):
            add_feedback(calls, await _feedback_of(store, req.project_id, calls))
        for call in calls if getattr(req, "expand_columns", None) else ():
            await expand_refs(call, req.expand_columns, lambda ref: _read_ref(request, ref))
        return calls

    return view


async def _add_trace_sizes(store: Store, project_id: str, calls: list[dict]) -> None:
    roots = [c["trace_id"] for c in calls if c.get("parent_id") is None]
    sizes = await store.trace_storage_bytes(project_id, roots) if roots else {}
    for call in calls:
        if call.get("parent_id") is None:
            call["total_storage_size_bytes"] = sizes.get(call["trace_id"], 0)


async def project_prices(store: Store, project_id: str) -> dict[str, list[dict]]:
    found = await store.query_docs("costs", DocsQuery(project_id=project_id))
    prices: dict[str, list[dict]] = {}
    for doc in found.docs:
        prices.setdefault(doc["llm_id"], []).append(doc)
    return prices


async def _feedback_of(store: Store, project_id: str, calls: list[dict]) -> list[dict]:
    refs = [{"$literal": f"weave:///{project_id}/call/{c['id']}"} for c in calls]
    query = {"$expr": {"$in": [{"$getField": "weave_ref"}, refs]}}
    found = await store.query_docs(
        "feedback", DocsQuery(project_id=project_id, query=query, fields=FEEDBACK_FIELDS)
    )
    return found.docs


async def _read_ref(request: web.Request, uri: str) -> Any:
    return await resolve(request, parse_ref(uri, "expand_columns"), "expand_columns")


@routes.post("/call/read")
async def call_read(request: web.Request) -> web.Response:
    state = state_of(request)
    req = await state.decode(request, CallReadReq)
    query = CallsQuery(project_id=req.project_id, filter=CallsFilter(call_ids=[req.id]), limit=1)
    page = await _views(request, req)(await _first_page(state.store.query_calls(query)))
    if not page:
        return ok({"call": None})
    call = page[0]
    days = await retention_in_force(request, req.project_id)
    if days is not None and isinstance(call.get("started_at"), dt.datetime):
        call["expire_at"] = call["started_at"] + dt.timedelta(days=days)  # weave's call_read
    return ok({"call": call})


@routes.post("/calls/stream_query")
async def calls_stream_query(request: web.Request) -> web.StreamResponse:
    """One CallSchema per line, read from one store cursor a chunk at a time."""
    return await stream_calls(request, await state_of(request).decode(request, CallsQueryReq))


async def stream_calls(request: web.Request, req: CallsQueryReq,
                       shape: Callable[[dict], dict] | None = None) -> web.StreamResponse:  # fmt: skip
    """The calls ``req`` asks for as ``/calls/stream_query`` answers them, each then given
    to ``shape`` (the trace browser's previews: engine.server._routes_ui)."""
    pages = state_of(request).store.query_calls(_calls_query(req))
    view = _views(request, req)
    if shape is not None:
        viewed = view

        async def view(page: list[dict]) -> list[dict]:
            return [shape(call) for call in await viewed(page)]

    return await stream_jsonl(request, _viewed(query_errors(pages), view))


async def query_errors(pages: AsyncGenerator[list[dict], None]) -> AsyncGenerator[list[dict], None]:
    """The pages, with a query the store cannot run as a 422 (raised before any byte)."""
    async with contextlib.aclosing(pages):
        try:
            async for page in pages:
                yield page
        except InvalidQuery as exc:
            raise ApiError(422, str(exc)) from None


async def _viewed(pages: AsyncGenerator[list[dict], None],
                  view: Callable[[list[dict]], Awaitable[list[dict]]]) -> AsyncGenerator[list[dict], None]:  # fmt: skip
    async with contextlib.aclosing(pages):
        async for page in pages:
            yield await view(page)


@routes.post("/calls/query_stats")
async def calls_query_stats(request: web.Request) -> web.Response:
    state = state_of(request)
    req = await state.decode(request, CallsQueryStatsReq)
    if req.limit is not None and req.limit < 1:
        raise ApiError(400, f"limit: must be a positive integer, got {req.limit}")
    query = _calls_query(req)
    try:
        count = await state.store.count_calls(query)
    except InvalidQuery as exc:
        raise ApiError(422, str(exc)) from None
    total = 0
    if req.include_total_storage_size:
        roots = [c["trace_id"] async for page in state.store.query_calls(query) for c in page
                 if c.get("parent_id") is None]  # fmt: skip
        sizes = await state.store.trace_storage_bytes(req.project_id, roots) if roots else {}
        total = sum(sizes.values())
    has_more = req.limit is not None and count >= req.limit
    return ok({"count": count, "has_more": has_more, "total_storage_size_bytes": total})
@routes.post("/calls/delete")
async def calls_delete(request: web.Request) -> web.Response:
    state = state_of(request)
    req = await state.decode(request, CallsDeleteReq)
    deleted = await state.store.delete_calls(req.project_id, req.call_ids)
    # as weave's servers count: every id asked for once, stored or not, and the calls
    # deleted below them (a retried delete still counts the ids it names)
    return ok({"num_deleted": len({*req.call_ids, *deleted})})


@routes.post("/call/update")
async def call_update(request: web.Request) -> web.Response:
    """Rename a call. A missing or deleted call is left as it is (nothing is stored for it)
    and answered ``{}``, as both weave servers answer; an update naming nothing is a 400."""
    state = state_of(request)
    req = await state.decode(request, CallUpdateReq)
    if req.display_name is None:
        raise ApiError(400, "display_name: one of [display_name] is required for a call update")
    await state.store.set_call_display_name(req.project_id, req.call_id, req.display_name)
    return ok({})
