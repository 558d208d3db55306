"""Token usage rolled up a trace (``/trace/usage``, ``/calls/usage``), as weave's UI reads it.

Each call's usage per model (``summary.usage``: prompt/input and completion/output tokens
added up, requests, total tokens, cache tokens; with ``include_costs`` the costs of its
project prices) plus the usage of every call below it. ``unfinished_call_ids`` names the
calls that have not ended, whose usage may still grow.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from engine.server._calls_view import call_costs, call_view, usage_by_model
from engine.server._reply import ok, project_of
from engine.server._routes_calls import project_prices, query_errors
from engine.server._routes_feedback import check_query
from engine.server._state import state_of
from engine.server._store import CallsQuery
from engine.wire._base import Request
from engine.wire.query import CallsFilter, NonNegativeInt

routes = web.RouteTableDef()
_COSTS = ("prompt_tokens_total_cost", "completion_tokens_total_cost",
          "cache_read_input_tokens_total_cost", "cache_creation_input_tokens_total_cost")  # fmt: skip
_COUNTS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens",
           "cache_read_input_tokens", "cache_creation_input_tokens")  # fmt: skip


class TraceUsageReq(Request, kw_only=True):
    project_id: str
    filter: CallsFilter | None = None
    query: dict[str, Any] | None = None
    include_costs: bool = False
    limit: NonNegativeInt | None = None


class CallsUsageReq(Request, kw_only=True):
    project_id: str
    call_ids: list[str]
    include_costs: bool = False
    limit: NonNegativeInt | None = None


def _own_usage(call: dict[str, Any], prices: dict[str, list[dict]] | None) -> dict[str, dict]:
    usage = usage_by_model(call["summary"])
    costs = call_costs(usage, prices, call["started_at"], call["project_id"]) if prices is not None else {}
    own = {}
    for model, used in usage.items():
        entry = {k: used[k] for k in _COUNTS}
        entry["total_tokens"] = entry["total_tokens"] or used["prompt_tokens"] + used["completion_tokens"]
        if prices is not None:
            entry.update({k: costs.get(model, {}).get(k, 0.0) for k in _COSTS})
        if any(entry[k] for k in _COUNTS) or (prices is not None and any(entry[k] for k in _COSTS)):
            own[model] = entry
    return own


def _rolled_up(calls: list[dict[str, Any]]) -> dict[str, dict[str, dict]]:
    """Each call's usage plus its descendants' (bottom-up, no recursion)."""
    usage = {c["id"]: c["usage"] for c in calls}
    parent = {c["id"]: c.get("parent_id") for c in calls if c.get("parent_id") in usage}
    pending = {cid: 0 for cid in usage}
    for pid in parent.values():
        pending[pid] += 1
    ready = [cid for cid, n in pending.items() if n == 0]
    while ready:
        cid = ready.pop()
        pid = parent.get(cid)
        if pid is None:
            continue
        for model, entry in usage[cid].items():
            into = usage[pid].setdefault(model, {k: 0 for k in entry})
            for key, value in entry.items():
                into[key] = (into.get(key) or 0) + (value or 0)
        pending[pid] -= 1
        if pending[pid] == 0:
            ready.append(pid)
    return usage


async def _usage(request: web.Request, query: CallsQuery, with_costs: bool) -> tuple[dict, list[str]]:
    store = state_of(request).store
    prices = await project_prices(store, query.project_id) if with_costs else None
    calls, unfinished = [], []
    async for page in query_errors(store.query_calls(query)):
        for call in map(call_view, page):
            calls.append({"id": call["id"], "parent_id": call.get("parent_id"),
                          "usage": _own_usage(call, prices)})  # fmt: skip
            if call.get("ended_at") is None:
                unfinished.append(call["id"])
    return _rolled_up(calls), sorted(unfinished)


@routes.post("/trace/usage")
async def trace_usage(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, TraceUsageReq)
    query = CallsQuery(project_id=project_of(req.project_id), filter=req.filter,
                       query=check_query(req.query), limit=req.limit)  # fmt: skip
    usage, unfinished = await _usage(request, query, req.include_costs)
    return ok({"call_usage": usage, "unfinished_call_ids": unfinished})


@routes.post("/calls/usage")
async def calls_usage(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, CallsUsageReq)
    project_id = project_of(req.project_id)
    if not req.call_ids:
        return ok({"call_usage": {}, "unfinished_call_ids": []})
    roots = CallsQuery(project_id=project_id, filter=CallsFilter(call_ids=req.call_ids))
    pages = query_errors(state_of(request).store.query_calls(roots))
    traces = {c["trace_id"] async for page in pages for c in page}
    if not traces:
        return ok({"call_usage": {cid: {} for cid in req.call_ids}, "unfinished_call_ids": []})
    query = CallsQuery(project_id=project_id, filter=CallsFilter(trace_ids=sorted(traces)),
                       limit=req.limit)  # fmt: skip
    usage, unfinished = await _usage(request, query, req.include_costs)
    return ok({"call_usage": {cid: usage.get(cid, {}) for cid in req.call_ids},
               "unfinished_call_ids": unfinished})  # fmt: skip


# bodies of these routes, for whoever checks them by type (tests/server/test_fuzz_routes.py)
REQUEST_TYPES = {("POST", "/trace/usage"): TraceUsageReq, ("POST", "/calls/usage"): CallsUsageReq}
