"""LLM costs: create per-model prices, query them with ``$expr``, purge by query.

Each created price is a row of its own with a new id, as on weave's server (units default
to USD, ``effective_date`` to now). A purge names ids only.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

import msgspec
from aiohttp import web

from engine.server._body import ApiError
from engine.server._feedback_rules import check_purge_by_ids
from engine.server._reply import now_us, ok, project_of
from engine.server._routes_feedback import docs_query, purge_docs
from engine.server._rows import from_us
from engine.server._state import state_of
from engine.server._store import Doc, DocKind
from engine.wire._codec import uuid7
from engine.wire.costs import CostCreateInput, CostCreateReq, CostPurgeReq, CostQueryReq

routes = web.RouteTableDef()
_TABLE: DocKind = "costs"
MAX_COSTS_PER_CREATE = 1000
# what a query without ``fields`` answers per price (weave's answer)
QUERY_FIELDS = ("id", "llm_id", "prompt_token_cost", "completion_token_cost",
                "cache_read_input_token_cost", "cache_creation_input_token_cost",
                "prompt_token_cost_unit", "completion_token_cost_unit", "effective_date",
                "provider_id")  # fmt: skip
# the columns of weave's llm_token_prices table: what a query may name
COST_FIELDS = frozenset({*QUERY_FIELDS, "pricing_level", "pricing_level_id", "created_by",
                         "created_at"})  # fmt: skip


def _cost_doc(project_id: str, llm_id: str, cost: CostCreateInput, user: str | None,
              created: _dt.datetime) -> dict[str, Any]:  # fmt: skip
    """A price as weave's server stores one: a project-level price with its own id."""
    doc = msgspec.to_builtins(cost)
    doc.update(
        id=uuid7(), pricing_level="project", pricing_level_id=project_id, llm_id=llm_id,
        provider_id=cost.provider_id or "default",
        effective_date=msgspec.to_builtins(cost.effective_date or created),
        prompt_token_cost_unit=cost.prompt_token_cost_unit or "USD",
        completion_token_cost_unit=cost.completion_token_cost_unit or "USD",
        created_by=user, created_at=msgspec.to_builtins(created),
    )  # fmt: skip
    return doc


@routes.post("/cost/create")
async def cost_create(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, CostCreateReq)
    project_of(req.project_id)
    if not req.costs or len(req.costs) > MAX_COSTS_PER_CREATE:
        raise ApiError(
            422, f"costs: between 1 and {MAX_COSTS_PER_CREATE} models, got {len(req.costs)}"
        )
    created_us = now_us()
    created = from_us(created_us)
    docs = [_cost_doc(req.project_id, llm_id, cost, req.wb_user_id, created)
            for llm_id, cost in req.costs.items()]  # fmt: skip
    rows = [Doc(req.project_id, d["id"], created_us, msgspec.json.encode(d).decode()) for d in docs]
    await state_of(request).store.put_docs(_TABLE, rows)
    return ok({"ids": [[d["id"], d["llm_id"]] for d in docs]})


@routes.post("/cost/query")
async def cost_query(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, CostQueryReq)
    fields = req.fields if req.fields is not None else list(QUERY_FIELDS)
    query = docs_query(req.project_id, req.query, req.sort_by, req.limit, req.offset, fields,
                       COST_FIELDS)  # fmt: skip
    found = await state_of(request).store.query_docs(_TABLE, query)
    return ok({"results": found.docs})


@routes.post("/cost/purge")
async def cost_purge(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, CostPurgeReq)
    check_purge_by_ids(req.query, allow_in=True, what="a price")
    await purge_docs(request, _TABLE, req.project_id, req.query, COST_FIELDS)
    return ok({})
