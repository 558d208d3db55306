"""Feedback: create (one or a batch with client ids), query, purge, replace.

Feedback is keyed by (project, id). A create that carries an id already stored answers
with the stored feedback and changes nothing, so a resent batch adds no duplicates.
Queries evaluate weave's ``$expr`` language (:mod:`engine.server._query_expr`) over the
project's feedback, oldest first unless sorted.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from engine.server._body import ApiError
from engine.server._query_expr import InvalidExpr, compile_query, select_docs
from engine.server._reply import now_us, ok, page_of, project_of
from engine.server._rows import from_us
from engine.server._sqlite_objects import (
    more_of,
    q_delete_docs,
    q_put_docs,
    q_replace_doc,
    q_scan_docs,
)
from engine.server._state import state_of
from engine.wire._codec import uuid7
from engine.wire.feedback import (
    FeedbackCreateBatchReq,
    FeedbackCreateReq,
    FeedbackPurgeReq,
    FeedbackQueryReq,
    FeedbackReplaceReq,
)

routes = web.RouteTableDef()
MAX_BATCH_ITEMS = 1000
_TABLE = "feedback"


def _check_ref(req: FeedbackCreateReq, field: str) -> None:
    prefix = f"weave:///{req.project_id}/"
    if not req.weave_ref.startswith(prefix):
        raise ApiError(
            422, f"{field}weave_ref: {req.weave_ref!r} is not a ref into project {req.project_id!r}"
        )


def _record(req: FeedbackCreateReq, field: str = "") -> tuple[str, str, int, str]:
    """The stored row ``(project_id, id, created_at_us, doc_json)`` of a create."""
    project_of(req.project_id, f"{field}project_id")
    _check_ref(req, field)
    if not req.feedback_type:
        raise ApiError(422, f"{field}feedback_type: must not be empty")
    created_us = now_us()
    doc = {k: v for k, v in msgspec.structs.asdict(req).items() if v is not None}
    doc.pop("feedback_id", None)  # a replace's pointer to the old feedback is not stored
    doc.update(
        id=req.id or uuid7(), created_at=from_us(created_us), wb_user_id=req.wb_user_id or ""
    )
    return req.project_id, doc["id"], created_us, msgspec.json.encode(doc).decode()


def _answer(stored_doc: str) -> dict[str, Any]:
    doc = msgspec.json.decode(stored_doc)
    return {k: doc[k] for k in ("id", "created_at", "wb_user_id", "payload")}


@routes.post("/feedback/create")
async def feedback_create(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, FeedbackCreateReq)
    [(_, stored)] = await more_of(request).run(q_put_docs, _TABLE, [_record(req)])
    return ok(_answer(stored))


@routes.post("/feedback/batch/create")
async def feedback_batch_create(request: web.Request) -> web.Response:
    """Every item in one transaction; items keep their client ids."""
    req = await state_of(request).decode(request, FeedbackCreateBatchReq)
    if len(req.batch) > MAX_BATCH_ITEMS:
        raise ApiError(422, f"batch: at most {MAX_BATCH_ITEMS} items, got {len(req.batch)}")
    records = [_record(item, f"batch[{i}].") for i, item in enumerate(req.batch)]
    stored = await more_of(request).run(q_put_docs, _TABLE, records)
    return ok({"res": [_answer(doc) for _, doc in stored]})


def predicate_of(query: dict[str, Any] | None):
    try:
        return compile_query(query)
    except InvalidExpr as exc:
        raise ApiError(422, str(exc)) from None


async def scan_docs(request: web.Request, table: str, project_id: str) -> list[dict[str, Any]]:
    stored = await more_of(request).run(q_scan_docs, table, project_id)
    return [msgspec.json.decode(doc) for doc in stored]


async def purge_docs(request: web.Request, table: str, project_id: str, query: Any) -> None:
    """Delete the project's documents of ``table`` that ``query`` matches."""
    predicate = predicate_of(query)
    docs = await scan_docs(request, table, project_of(project_id))
    ids = [doc["id"] for doc in docs if predicate(doc)]
    await more_of(request).run(q_delete_docs, table, project_id, ids)


@routes.post("/feedback/query")
async def feedback_query(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, FeedbackQueryReq)
    predicate = predicate_of(req.query)
    docs = await scan_docs(request, _TABLE, project_of(req.project_id))
    sort_by = [(s.field, s.direction == "desc") for s in req.sort_by or []]
    page, total = select_docs(docs, predicate, sort_by, page_of(req.limit, req.offset), req.fields)
    return ok({"result": page, "total_count": total})


@routes.post("/feedback/purge")
async def feedback_purge(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, FeedbackPurgeReq)
    await purge_docs(request, _TABLE, req.project_id, req.query)
    return ok({})


@routes.post("/feedback/replace")
async def feedback_replace(request: web.Request) -> web.Response:
    """Delete ``feedback_id`` and store the new feedback (a new id unless one is given)."""
    req = await state_of(request).decode(request, FeedbackReplaceReq)
    record = _record(req)
    if not await more_of(request).run(
        q_replace_doc, _TABLE, req.project_id, req.feedback_id, record
    ):
        raise ApiError(404, f"feedback {req.feedback_id!r} not found in {req.project_id!r}")
    return ok(_answer(record[3]))
