"""LLM cost models (WIRE.md §5): ``/cost/create``, ``/cost/query``, ``/cost/purge``."""

from __future__ import annotations

import datetime as _dt

from engine.wire._base import Nested, Query, Request, Response
from engine.wire.query import SortBy

__all__ = [
    "CostCreateInput",
    "CostCreateReq",
    "CostCreateRes",
    "CostQueryReq",
    "CostQueryOutput",
    "CostQueryRes",
    "CostPurgeReq",
    "CostPurgeRes",
]


class CostCreateInput(Nested, kw_only=True):
    """Prices of one LLM, per token."""

    prompt_token_cost: float
    completion_token_cost: float
    prompt_token_cost_unit: str | None = "USD"
    completion_token_cost_unit: str | None = "USD"
    # the server uses the current date when absent
    effective_date: _dt.datetime | None = None
    # e.g. "openai"; the server uses "default" when absent
    provider_id: str | None = None
    # never null on the wire, only absent
    cache_read_input_token_cost: float | None = None
    cache_creation_input_token_cost: float | None = None


class CostCreateReq(Request, kw_only=True):
    project_id: str
    # keyed by LLM id, e.g. "gpt-4o"
    costs: dict[str, CostCreateInput]
    wb_user_id: str | None = None


class CostCreateRes(Response, kw_only=True):
    # (cost id, llm id) per created cost, as weave's server answers
    ids: list[tuple[str, str]]


class CostQueryReq(Request, kw_only=True):
    project_id: str
    fields: list[str] | None = None
    query: Query | None = None
    sort_by: list[SortBy] | None = None
    limit: int | None = None
    offset: int | None = None


class CostQueryOutput(Response, kw_only=True):
    """One cost row; only the requested ``fields`` are present."""

    id: str | None = None
    llm_id: str | None = None
    prompt_token_cost: float | None = None
    completion_token_cost: float | None = None
    prompt_token_cost_unit: str | None = None
    completion_token_cost_unit: str | None = None
    effective_date: _dt.datetime | None = None
    provider_id: str | None = None
    cache_read_input_token_cost: float | None = None
    cache_creation_input_token_cost: float | None = None


class CostQueryRes(Response, kw_only=True):
    results: list[CostQueryOutput]


class CostPurgeReq(Request, kw_only=True):
    project_id: str
    query: Query


class CostPurgeRes(Response, kw_only=True):
    pass
