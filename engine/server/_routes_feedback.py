"""Feedback: create (one or a batch with client ids), query, purge, replace.

Feedback is keyed by (project, id). A create that carries an id already stored answers
with the stored feedback and changes nothing, so a resent batch adds no duplicates.
Queries evaluate weave's ``$expr`` language (:mod:`engine.server._query_expr`) over the
project's feedback, oldest first unless sorted.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec
from aiohttp import web

from engine.server._body import ApiError
from engine.server._feedback_rules import SCORER_FIELDS, check_purge_by_ids, processed_payload
from engine.server._query_expr import InvalidExpr, compile_query, fields_named
from engine.server._reply import now_us, ok, page_of, project_of
from engine.server._rows import from_us
from engine.server._state import state_of
from engine.server._store import Doc, DocKind, DocsQuery
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
_TABLE: DocKind = "feedback"
# the columns of weave's feedback table: what a query may name
FEEDBACK_FIELDS = frozenset({
    "id", "project_id", "weave_ref", "wb_user_id", "creator", "created_at", "feedback_type",
    "payload", "annotation_ref", "runnable_ref", "call_ref", "trigger_ref", "queue_id",
    "scorer_tags", "scorer_tag_reasons", "scorer_tag_confidences", "scorer_ratings",
    "scorer_rating_reasons", "scorer_rating_confidences",
})  # fmt: skip


_REF_SCHEMES = ("weave:///", "weave-trace-internal:///")


def _check_ref(req: FeedbackCreateReq, field: str) -> None:
    """A ref into another project is refused: a project's feedback stays in it (weave's
    hosted server refuses a ref the caller may not read). Any other text is stored as it
    is, as both weave servers store it (the feedback is the project's, and names no call)."""
    prefix = f"weave:///{req.project_id}/"
    if req.weave_ref.startswith(_REF_SCHEMES) and not req.weave_ref.startswith(prefix):
        raise ApiError(
            422, f"{field}weave_ref: {req.weave_ref!r} is not a ref into project {req.project_id!r}"
        )


def feedback_doc(req: FeedbackCreateReq, field: str = "") -> Doc:
    """The stored document of a create (weave's checks and payload processing first)."""
    project_of(req.project_id, f"{field}project_id")
    _check_ref(req, field)
    payload = processed_payload(req, field)
    created_us = now_us()
    doc = {k: v for k, v in msgspec.structs.asdict(req).items() if v is not None}
    doc.pop("feedback_id", None)  # a replace's pointer to the old feedback is not stored
    doc["payload"] = payload
    for name in SCORER_FIELDS:  # weave stores them empty when not given
        doc.setdefault(name, [] if name == "scorer_tags" else {})
    doc.update(
        id=req.id or uuid7(), created_at=from_us(created_us), wb_user_id=req.wb_user_id or ""
    )
    return Doc(req.project_id, doc["id"], created_us, msgspec.json.encode(doc).decode())


def _answer(stored: Doc) -> dict[str, Any]:
    doc = msgspec.json.decode(stored.doc)
    return {k: doc[k] for k in ("id", "created_at", "wb_user_id", "payload")}


@routes.post("/feedback/create")
async def feedback_create(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, FeedbackCreateReq)
    [stored] = await state_of(request).store.put_docs(_TABLE, [feedback_doc(req)])
    return ok(_answer(stored))


@routes.post("/feedback/batch/create")
async def feedback_batch_create(request: web.Request) -> web.Response:
    """Every item in one transaction; items keep their client ids."""
    req = await state_of(request).decode(request, FeedbackCreateBatchReq)
    if len(req.batch) > MAX_BATCH_ITEMS:
        raise ApiError(422, f"batch: at most {MAX_BATCH_ITEMS} items, got {len(req.batch)}")
    records = [feedback_doc(item, f"batch[{i}].") for i, item in enumerate(req.batch)]
    stored = await state_of(request).store.put_docs(_TABLE, records)
    return ok({"res": [_answer(doc) for doc in stored]})


def check_query(query: dict[str, Any] | None) -> dict[str, Any] | None:
    try:
        compile_query(query)
    except InvalidExpr as exc:
        raise ApiError(422, str(exc)) from None
    return query


def _check_fields(named: Iterable[tuple[str, str]], columns: frozenset[str]) -> None:
    """weave's rule for the fields of a feedback or cost query: a column, or a path below
    one (``payload.score``); any other name is a 400, not a column of nulls."""
    for where, name in named:
        if name.split(".", 1)[0] not in columns:
            raise ApiError(400, f"{where}: unknown field {name!r}; fields: {', '.join(sorted(columns))}")


def docs_query(project_id: str, query: dict[str, Any] | None, sort_by: list[Any] | None,
               limit: int | None, offset: int | None, fields: list[str] | None,
               columns: frozenset[str]) -> DocsQuery:  # fmt: skip
    """A validated documents query (``sort_by`` holds wire SortBy models) over documents
    whose top-level fields are ``columns``."""
    limit, offset = page_of(limit, offset)
    query = check_query(query)
    _check_fields(fields_named(query["$expr"], "query.$expr") if query else (), columns)
    _check_fields(((f"fields[{i}]", name) for i, name in enumerate(fields or [])), columns)
    _check_fields(((f"sort_by[{i}].field", s.field) for i, s in enumerate(sort_by or [])), columns)
    return DocsQuery(
        project_id=project_of(project_id), query=query,
        sort_by=tuple((s.field, s.direction == "desc") for s in sort_by or []),
        limit=limit, offset=offset, fields=None if fields is None else tuple(fields),
    )  # fmt: skip


async def purge_docs(request: web.Request, kind: DocKind, project_id: str, query: Any,
                     columns: frozenset[str]) -> None:  # fmt: skip
    """Delete the project's documents of ``kind`` that ``query`` matches."""
    store = state_of(request).store
    selected = docs_query(project_id, query, None, None, None, ["id"], columns)
    found = await store.query_docs(kind, selected)
    await store.delete_docs(kind, project_id, [doc["id"] for doc in found.docs])


@routes.post("/feedback/query")
async def feedback_query(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, FeedbackQueryReq)
    query = docs_query(req.project_id, req.query, req.sort_by, req.limit, req.offset, req.fields,
                       FEEDBACK_FIELDS)  # fmt: skip
    found = await state_of(request).store.query_docs(_TABLE, query)
    return ok({"result": found.docs, "total_count": found.total})


@routes.post("/feedback/purge")
async def feedback_purge(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, FeedbackPurgeReq)
    check_purge_by_ids(req.query, allow_in=False, what="feedback")
    await purge_docs(request, _TABLE, req.project_id, req.query, FEEDBACK_FIELDS)
    return ok({})


@routes.post("/feedback/replace")
async def feedback_replace(request: web.Request) -> web.Response:
    """Delete ``feedback_id`` (if stored) and store the new feedback (a new id unless one is
    given), as weave does: purge, then create."""
    req = await state_of(request).decode(request, FeedbackReplaceReq)
    record = feedback_doc(req)
    store = state_of(request).store
    if not await store.replace_doc(_TABLE, req.feedback_id, record):
        await store.put_docs(_TABLE, [record])
    return ok(_answer(record))
