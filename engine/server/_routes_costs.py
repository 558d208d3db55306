"""LLM costs: create per-model prices, query them with ``$expr``, purge by query.

A cost row's id is the digest of its content (project, model, prices, units, provider,
effective date), so creating the same prices twice stores one row. ``effective_date``
defaults to now, as on the real server; a create without one is therefore a new price
each time.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

import msgspec
from aiohttp import web

from engine.server._body import ApiError
from engine.server._digest import value_digest
from engine.server._reply import now_us, ok, project_of
from engine.server._routes_feedback import docs_query, purge_docs
from engine.server._state import state_of
from engine.server._store import Doc, DocKind
from engine.wire.costs import CostCreateInput, CostCreateReq, CostPurgeReq, CostQueryReq

routes = web.RouteTableDef()
_TABLE: DocKind = "costs"
MAX_COSTS_PER_CREATE = 1000


def _cost_doc(project_id: str, llm_id: str, cost: CostCreateInput) -> dict[str, Any]:
    effective = cost.effective_date or _dt.datetime.now(_dt.timezone.utc)
    doc = msgspec.to_builtins(msgspec.structs.replace(cost, effective_date=effective))
    doc.update(llm_id=llm_id, provider_id=cost.provider_id or "default")
    doc["id"] = value_digest({"project_id": project_id, **doc})
    return doc


@routes.post("/cost/create")
async def cost_create(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, CostCreateReq)
    project_of(req.project_id)
    if not req.costs or len(req.costs) > MAX_COSTS_PER_CREATE:
        raise ApiError(
            422, f"costs: between 1 and {MAX_COSTS_PER_CREATE} models, got {len(req.costs)}"
        )
    docs = [_cost_doc(req.project_id, llm_id, cost) for llm_id, cost in req.costs.items()]
    created_us = now_us()
    rows = [Doc(req.project_id, d["id"], created_us, msgspec.json.encode(d).decode()) for d in docs]
    await state_of(request).store.put_docs(_TABLE, rows)
    return ok({"ids": [[d["llm_id"], d["id"]] for d in docs]})


@routes.post("/cost/query")
async def cost_query(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, CostQueryReq)
    query = docs_query(req.project_id, req.query, req.sort_by, req.limit, req.offset, req.fields)
    found = await state_of(request).store.query_docs(_TABLE, query)
    return ok({"results": found.docs})


@routes.post("/cost/purge")
async def cost_purge(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, CostPurgeReq)
    await purge_docs(request, _TABLE, req.project_id, req.query)
    return ok({})
