"""The feedback and cost statements of the SQLite store: JSON documents keyed by
(project, id), kept in creation order. Queries are evaluated by ``_query_expr`` over the
decoded documents of one project; a feedback query that pins ``weave_ref`` (a call's or an
object's feedback, a page of calls with ``include_feedback``) reads only those documents,
through the ``feedback_by_ref`` index: an evaluation leaves a scorer's feedback on every
prediction, so a project can hold hundreds of thousands."""

from __future__ import annotations

import json
import sqlite3

import msgspec

from engine.server._query_expr import compile_query, pinned_refs, select_docs
from engine.server._sqlite_db import Transaction
from engine.server._store import Doc, DocKind, DocsPage, DocsQuery

_TABLES: dict[str, str] = {"feedback": "feedback", "costs": "costs"}


def _table(kind: DocKind) -> str:
    return _TABLES[kind]  # a whitelist: the name goes into SQL text


def _row(doc: Doc) -> tuple[str, str, int, str]:
    return (doc.project_id, doc.id, doc.created_at_us, doc.doc)


def q_put_docs(conn: sqlite3.Connection, kind: DocKind, docs: list[Doc]) -> list[Doc]:
    with Transaction(conn):
        conn.executemany(f"INSERT OR REPLACE INTO {_table(kind)} VALUES (?, ?, ?, ?)", map(_row, docs))
    return list(docs)


# the expression of the feedback_by_ref index (the "more" migrations): a query must spell it
# the same way for SQLite to use the index
_REF = "json_extract(doc, '$.weave_ref')"


def q_query_docs(conn: sqlite3.Connection, kind: DocKind, q: DocsQuery) -> DocsPage:
    matches = compile_query(q.query)
    refs = pinned_refs(kind, q.query)
    narrow, params = ("", ()) if refs is None else (
        f" AND {_REF} IN (SELECT value FROM json_each(?))", (json.dumps(refs),))
    rows = conn.execute(
        f"SELECT doc FROM {_table(kind)} WHERE project_id = ?{narrow} "
        "ORDER BY created_at_us, rowid",
        (q.project_id, *params),
    )
    docs = [msgspec.json.decode(row[0]) for row in rows]
    limit = len(docs) if q.limit is None else q.limit
    page, total = select_docs(docs, matches, q.sort_by, (limit, q.offset), q.fields)
    return DocsPage(page, total)


def q_delete_docs(conn: sqlite3.Connection, kind: DocKind, project_id: str, ids: list[str]) -> int:
    with Transaction(conn):
        cur = conn.executemany(
            f"DELETE FROM {_table(kind)} WHERE project_id = ? AND id = ?",
            [(project_id, i) for i in ids],
        )
        return cur.rowcount


def q_replace_doc(conn: sqlite3.Connection, kind: DocKind, old_id: str, new: Doc) -> bool:
    name = _table(kind)
    with Transaction(conn):
        cur = conn.execute(
            f"DELETE FROM {name} WHERE project_id = ? AND id = ?", (new.project_id, old_id)
        )
        if cur.rowcount == 0:
            return False
        conn.execute(f"INSERT OR REPLACE INTO {name} VALUES (?, ?, ?, ?)", _row(new))
        return True
