"""Call ingest models (WIRE.md §3): start, end, complete, and the seed's Batch.

Field order is the wire order and is load-bearing: an encoded ``EndedCallSchemaForInsert``
puts the identifying fields (``project_id``, ``id``, ``trace_id``, ``started_at``,
``is_eval``) first and the payload fields from ``ended_at`` on, so the sender can make a
complete call by splicing bytes — ``start[:-1] + b"," + end[splice_offset:]`` — without
decoding either (see :func:`end_splice_offset`).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

import msgspec

from engine.wire._base import Nested as _Insert
from engine.wire._base import Request as _Request
from engine.wire._base import Response as _Response

__all__ = [
    "SummaryMap",
    "LLMUsage",
    "StartedCallSchemaForInsert",
    "EndedCallSchemaForInsert",
    "CompletedCallSchemaForInsert",
    "CallStartReq",
    "CallStartRes",
    "CallEndReq",
    "CallEndRes",
    "StartBatchItem",
    "EndBatchItem",
    "Batch",
    "CallCreateBatchReq",
    "CallCreateBatchRes",
    "CallsUpsertCompleteReq",
    "CallsUpsertCompleteRes",
    "CallStartV2Req",
    "CallStartV2Res",
    "CallEndV2Req",
    "CallEndV2Res",
    "end_splice_offset",
    "splice_complete",
]


class LLMUsage(msgspec.Struct, kw_only=True, omit_defaults=True):
    prompt_tokens: int | None = None
    input_tokens: int | None = None
    completion_tokens: int | None = None
    output_tokens: int | None = None
    requests: int | None = None
    total_tokens: int | None = None
    prompt_tokens_total_cost: float | None = None
    completion_tokens_total_cost: float | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None


SummaryMap = dict[str, Any]
"""``summary``: ``usage`` per model (:class:`LLMUsage` shape), ``status_counts``, other keys allowed."""


class StartedCallSchemaForInsert(_Insert, kw_only=True):
    project_id: str
    id: str | None = None
    op_name: str
    display_name: str | None = None
    trace_id: str | None = None
    parent_id: str | None = None
    thread_id: str | None = None
    turn_id: str | None = None
    started_at: _dt.datetime
    attributes: dict[str, Any]
    inputs: dict[str, Any]
    otel_dump: dict[str, Any] | None = None
    wb_user_id: str | None = None
    wb_run_id: str | None = None
    wb_run_step: int | None = None


class EndedCallSchemaForInsert(_Insert, kw_only=True):
    project_id: str
    id: str
    # identifying fields newer clients add to ends; they sit before the splice point
    trace_id: str | None = None
    started_at: _dt.datetime | None = None
    is_eval: bool | None = None
    # --- splice point: everything below is copied into a complete call ---
    ended_at: _dt.datetime
    exception: str | None = None
    output: Any = None
    summary: SummaryMap
    wb_run_step_end: int | None = None


class CompletedCallSchemaForInsert(_Insert, kw_only=True):
    project_id: str
    id: str
    op_name: str
    display_name: str | None = None
    trace_id: str
    parent_id: str | None = None
    thread_id: str | None = None
    turn_id: str | None = None
    started_at: _dt.datetime
    attributes: dict[str, Any]
    inputs: dict[str, Any]
    otel_dump: dict[str, Any] | None = None
    wb_user_id: str | None = None
    wb_run_id: str | None = None
    wb_run_step: int | None = None
    ended_at: _dt.datetime
    exception: str | None = None
    output: Any = None
    summary: SummaryMap
    wb_run_step_end: int | None = None


class CallStartReq(_Request, kw_only=True):
    start: StartedCallSchemaForInsert


class CallStartRes(_Response, kw_only=True):
    id: str
    trace_id: str


class CallEndReq(_Request, kw_only=True):
    end: EndedCallSchemaForInsert


class CallEndRes(_Response, kw_only=True):
    pass


class StartBatchItem(_Request, kw_only=True, tag_field="mode", tag="start"):
    req: CallStartReq


class EndBatchItem(_Request, kw_only=True, tag_field="mode", tag="end"):
    req: CallEndReq


class Batch(_Request, kw_only=True):
    """Body of ``POST /call/upsert_batch``."""

    batch: list[StartBatchItem | EndBatchItem]


class CallCreateBatchReq(_Request, kw_only=True):
    batch: list[StartBatchItem | EndBatchItem]


class CallCreateBatchRes(_Response, kw_only=True):
    # one CallStartRes-shaped ({id, trace_id}) or CallEndRes-shaped ({}) object per item;
    # plain objects because msgspec cannot decode a union of untagged Structs
    res: list[dict[str, Any]] = msgspec.field(default_factory=list)


class CallsUpsertCompleteReq(_Request, kw_only=True):
    """Body of ``POST /v2/{entity}/{project}/calls/complete`` (one project per body)."""

    batch: list[CompletedCallSchemaForInsert]


class CallsUpsertCompleteRes(_Response, kw_only=True):
    pass


class CallStartV2Req(_Request, kw_only=True):
    start: StartedCallSchemaForInsert


class CallStartV2Res(_Response, kw_only=True):
    id: str
    trace_id: str


class CallEndV2Req(_Request, kw_only=True):
    end: EndedCallSchemaForInsert


class CallEndV2Res(_Response, kw_only=True):
    pass


_SPLICE_KEY = b'"ended_at":'


def end_splice_offset(end_json: bytes) -> int:
    """Offset of the ``"ended_at"`` key in an encoded end: where its payload fields begin.

    The identifying fields before it hold only ids, a timestamp and a bool, none of which
    can contain the byte sequence ``"ended_at":`` (a quote inside a JSON string is escaped),
    so the first match is the key itself.
    """
    off = end_json.find(_SPLICE_KEY)
    if off < 0:
        raise ValueError("encoded end has no ended_at field")
    return off


def splice_complete(start_json: bytes, end_json: bytes, splice_offset: int) -> bytes:
    """A complete-call item from an encoded start and end, by byte splicing (no decoding)."""
    return b"".join((start_json[:-1], b",", end_json[splice_offset:]))


def _check_field_order() -> None:
    names = EndedCallSchemaForInsert.__struct_fields__
    assert names.index("ended_at") == 5 and names[:2] == ("project_id", "id"), names


_check_field_order()
