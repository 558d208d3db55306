"""Call read, query, stats, delete and update models (WIRE.md §5).

Field names follow the trace server's own models (``trace_server_interface.py`` in weave);
``ServerInfoRes`` adds ``accepts_encodings`` so our clients know they may compress.
"""

from __future__ import annotations

import datetime as _dt
from typing import Annotated, Any, Literal

import msgspec

from engine.wire._base import Request as _Request
from engine.wire._base import Response as _Response

__all__ = [
    "CallSchema",
    "CallReadReq",
    "CallReadRes",
    "CallsFilter",
    "SortBy",
    "CallsQueryReq",
    "CallsQueryRes",
    "CallsQueryStatsReq",
    "CallsQueryStatsRes",
    "CallsDeleteReq",
    "CallsDeleteRes",
    "CallUpdateReq",
    "CallUpdateRes",
    "ServerInfoRes",
]

# the top is SQLite's: a limit or offset past it cannot be bound into a statement
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class CallSchema(_Response, kw_only=True):
    """One stored call as the server returns it."""

    project_id: str
    id: str
    op_name: str
    display_name: str | None = None
    trace_id: str
    parent_id: str | None = None
    thread_id: str | None = None
    turn_id: str | None = None
    started_at: _dt.datetime
    attributes: dict[str, Any] = msgspec.field(default_factory=dict)
    inputs: dict[str, Any] = msgspec.field(default_factory=dict)
    ended_at: _dt.datetime | None = None
    exception: str | None = None
    output: Any = None
    summary: dict[str, Any] | None = None
    wb_user_id: str | None = None
    wb_run_id: str | None = None
    wb_run_step: int | None = None
    wb_run_step_end: int | None = None
    deleted_at: _dt.datetime | None = None
    storage_size_bytes: int | None = None
    total_storage_size_bytes: int | None = None


class CallReadReq(_Request, kw_only=True):
    project_id: str
    id: str
    include_costs: bool | None = None
    include_storage_size: bool | None = None
    include_total_storage_size: bool | None = None


class CallReadRes(_Response, kw_only=True):
    call: CallSchema | None = None


class CallsFilter(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    op_names: list[str] | None = None
    input_refs: list[str] | None = None
    output_refs: list[str] | None = None
    parent_ids: list[str] | None = None
    trace_ids: list[str] | None = None
    call_ids: list[str] | None = None
    thread_ids: list[str] | None = None
    turn_ids: list[str] | None = None
    trace_roots_only: bool | None = None
    wb_user_ids: list[str] | None = None
    wb_run_ids: list[str] | None = None


class SortBy(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    field: str
    direction: Literal["asc", "desc"]


class CallsQueryReq(_Request, kw_only=True):
    """Body of ``POST /calls/stream_query``.

    ``query`` (the ``$expr`` mini-language) is carried for wire compatibility; a server
    that cannot evaluate it must say so rather than silently return unfiltered rows.
    """

    project_id: str
    filter: CallsFilter | None = None
    limit: NonNegativeInt | None = None
    offset: NonNegativeInt | None = None
    sort_by: list[SortBy] | None = None
    query: dict[str, Any] | None = None
    include_costs: bool | None = None
    include_feedback: bool | None = None
    include_storage_size: bool | None = None
    include_total_storage_size: bool | None = None
    include_usernames: bool | None = None
    latest_only: bool | None = None
    columns: list[str] | None = None
    expand_columns: list[str] | None = None
    return_expanded_column_values: bool | None = None


class CallsQueryRes(_Response, kw_only=True):
    calls: list[CallSchema] = msgspec.field(default_factory=list)


class CallsQueryStatsReq(_Request, kw_only=True):
    project_id: str
    filter: CallsFilter | None = None
    query: dict[str, Any] | None = None
    limit: NonNegativeInt | None = None
    include_total_storage_size: bool | None = None
    expand_columns: list[str] | None = None


class CallsQueryStatsRes(_Response, kw_only=True):
    count: int
    total_storage_size_bytes: int | None = None


class CallsDeleteReq(_Request, kw_only=True):
    project_id: str
    call_ids: list[str]
    wb_user_id: str | None = None


class CallsDeleteRes(_Response, kw_only=True):
    num_deleted: int


class CallUpdateReq(_Request, kw_only=True):
    project_id: str
    call_id: str
    display_name: str | None = None
    wb_user_id: str | None = None


class CallUpdateRes(_Response, kw_only=True):
    pass


class ServerInfoRes(_Response, kw_only=True):
    min_required_weave_python_version: str
    trace_server_version: str
    accepts_encodings: list[str] = msgspec.field(default_factory=list)
    # engine's own: an opaque token of the machine the server runs on (engine.common._machine)
    machine: str | None = None
    # engine's own: the id of the data the server's store holds (Store.store_id)
    store_id: str | None = None
    # engine's own: /call/upsert_batch is taken for every project beside calls/complete, so
    # a client may batch the starts it sends before their ends (and those ends) through it
    accepts_upsert_batch: bool | None = None
