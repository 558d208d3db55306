"""Feedback models (WIRE.md §5): ``/feedback/create``, ``/feedback/batch/create``,
``/feedback/query``, ``/feedback/purge``, ``/feedback/replace``.

Batched creates carry client-made ids (:func:`feedback_batch`), so the ids the client
hands back before the batch is sent are the ids the server stores, and a resent batch
can be recognised. A server without the batch route answers 404; the client then sends
one create per item.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable
from typing import Any

import msgspec

from engine.wire._base import Query, Request, Response
from engine.wire._codec import uuid7
from engine.wire.query import SortBy

__all__ = [
    "FeedbackCreateReq",
    "FeedbackCreateRes",
    "FeedbackCreateBatchReq",
    "FeedbackCreateBatchRes",
    "FeedbackQueryReq",
    "FeedbackQueryRes",
    "FeedbackPurgeReq",
    "FeedbackPurgeRes",
    "FeedbackReplaceReq",
    "FeedbackReplaceRes",
    "feedback_batch",
]


class FeedbackCreateReq(Request, kw_only=True):
    # when set, the server stores the feedback under this id instead of making one
    id: str | None = None
    project_id: str
    # the thing the feedback is about, e.g. "weave:///entity/project/call/<call id>"
    weave_ref: str
    creator: str | None = None
    feedback_type: str
    payload: dict[str, Any]
    annotation_ref: str | None = None
    runnable_ref: str | None = None
    call_ref: str | None = None
    trigger_ref: str | None = None
    # the annotation queue the feedback came from
    queue_id: str | None = None
    wb_user_id: str | None = None
    # scorer (LLM judge) results: ratings and confidences in 0..1, keyed by rating/tag name;
    # never null on the wire, only absent
    scorer_ratings: dict[str, float] | None = None
    scorer_rating_confidences: dict[str, float] | None = None
    scorer_rating_reasons: dict[str, str] | None = None
    scorer_tags: list[str] | None = None
    scorer_tag_confidences: dict[str, float] | None = None
    scorer_tag_reasons: dict[str, str] | None = None
    scorer_trace_id: str | None = None
    span_agent_name: str | None = None
    span_agent_version: str | None = None
    span_conversation_id: str | None = None
    span_status_code: str | None = None
    span_trace_id: str | None = None


class FeedbackCreateRes(Response, kw_only=True):
    id: str
    created_at: _dt.datetime
    wb_user_id: str
    # when not empty, the payload as the server stored it (replaces the one sent)
    payload: dict[str, Any]


class FeedbackCreateBatchReq(Request, kw_only=True):
    batch: list[FeedbackCreateReq]


class FeedbackCreateBatchRes(Response, kw_only=True):
    res: list[FeedbackCreateRes]


class FeedbackQueryReq(Request, kw_only=True):
    project_id: str
    # e.g. ["id", "feedback_type", "payload.note"]; None returns every field
    fields: list[str] | None = None
    query: Query | None = None
    sort_by: list[SortBy] | None = None
    limit: int | None = None
    offset: int | None = None


class FeedbackQueryRes(Response, kw_only=True):
    # plain objects, not FeedbackCreateReq: the caller picks the fields
    result: list[dict[str, Any]]
    # newer servers only
    total_count: int | None = None


class FeedbackPurgeReq(Request, kw_only=True):
    project_id: str
    query: Query


class FeedbackPurgeRes(Response, kw_only=True):
    pass


class FeedbackReplaceReq(FeedbackCreateReq, kw_only=True):
    # the feedback being replaced
    feedback_id: str


class FeedbackReplaceRes(FeedbackCreateRes, kw_only=True):
    pass


def feedback_batch(items: Iterable[FeedbackCreateReq]) -> FeedbackCreateBatchReq:
    """A batch-create body whose every item has an id: missing ones get a fresh UUIDv7."""
    return FeedbackCreateBatchReq(
        batch=[item if item.id else msgspec.structs.replace(item, id=uuid7()) for item in items]
    )
