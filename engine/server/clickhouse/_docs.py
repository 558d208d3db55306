"""Feedback, costs, tables and files in ClickHouse (migration 0002); each function takes a
``clickhouse-connect`` client first and runs on a store thread. Documents are queried as
the SQLite store does: ``_query_expr`` over one project's decoded documents, in creation
order (then write order)."""

from __future__ import annotations

from typing import Any

import msgspec

from engine.server._query_expr import compile_query, pinned_refs, select_docs
from engine.server._store import Doc, DocKind, DocsPage, DocsQuery

_DOC_COLUMNS = ["kind", "project_id", "id", "created_at_us", "doc", "version", "removed"]


def _stored(client: Any, kind: DocKind, project_id: str, ids: list[str]) -> dict[str, tuple]:
    rows = client.query(
        "SELECT id, created_at_us, doc FROM docs FINAL WHERE kind = {k:String} "
        "AND project_id = {p:String} AND has({ids:Array(String)}, id)",
        parameters={"k": kind, "p": project_id, "ids": ids},
    ).result_rows
    return {row[0]: row[1:] for row in rows}


def put_docs(client: Any, kind: DocKind, docs: list[Doc], version: int) -> list[Doc]:
    """Insert the documents; one whose id is stored replaces it (the newest version wins)."""
    rows = [[kind, d.project_id, d.id, d.created_at_us, d.doc, version + i, 0]
            for i, d in enumerate(docs)]  # fmt: skip
    if rows:
        client.insert("docs", rows, column_names=_DOC_COLUMNS)
    return list(docs)


def query_docs(client: Any, kind: DocKind, q: DocsQuery) -> DocsPage:
    matches = compile_query(q.query)
    # a feedback query that pins weave_ref (a call's feedback, a page of calls with theirs)
    # decodes only those documents, not every one of the project
    refs = pinned_refs(kind, q.query)
    narrow = "" if refs is None else " AND JSONExtractString(doc, 'weave_ref') IN {refs:Array(String)}"
    rows = client.query(
        "SELECT doc FROM docs FINAL WHERE kind = {k:String} AND project_id = {p:String}"
        f"{narrow} ORDER BY created_at_us, version",
        parameters={"k": kind, "p": q.project_id, "refs": refs or []},
    ).result_rows
    docs = [msgspec.json.decode(row[0]) for row in rows]
    limit = len(docs) if q.limit is None else q.limit
    page, total = select_docs(docs, matches, q.sort_by, (limit, q.offset), q.fields)
    return DocsPage(page, total)


def delete_docs(client: Any, kind: DocKind, project_id: str, ids: list[str], version: int) -> int:
    found = _stored(client, kind, project_id, list(dict.fromkeys(ids)))
    if found:
        client.insert("docs", [[kind, project_id, i, 0, "", version, 1] for i in found],
                      column_names=_DOC_COLUMNS)  # fmt: skip
    return len(found)


def replace_doc(client: Any, kind: DocKind, old_id: str, new: Doc, version: int) -> bool:
    if not _stored(client, kind, new.project_id, [old_id]):
        return False
    rows = [[kind, new.project_id, new.id, new.created_at_us, new.doc, version + 1, 0]]
    if old_id != new.id:
        rows.insert(0, [kind, new.project_id, old_id, 0, "", version, 1])
    client.insert("docs", rows, column_names=_DOC_COLUMNS)
    return True


# -- tables and files ---------------------------------------------------------------------


def put_table(client: Any, project_id: str, digest: str, row_digests: list[str],
              new_rows: list[tuple[str, str]]) -> None:  # fmt: skip
    if new_rows:
        client.insert("table_rows", [[project_id, d, v] for d, v in new_rows],
                      column_names=["project_id", "digest", "val"])  # fmt: skip
    client.insert("table_versions", [[project_id, digest, row_digests]],
                  column_names=["project_id", "digest", "row_digests"])  # fmt: skip


def table_row_digests(client: Any, project_id: str, digest: str) -> list[str] | None:
    rows = client.query(
        "SELECT row_digests FROM table_versions WHERE project_id = {p:String} "
        "AND digest = {d:String} LIMIT 1",
        parameters={"p": project_id, "d": digest},
    ).result_rows
    return list(rows[0][0]) if rows else None


def table_rows(client: Any, project_id: str, row_digests: list[str]) -> dict[str, str]:
    rows = client.query(
        "SELECT digest, any(val) FROM table_rows WHERE project_id = {p:String} "
        "AND has({d:Array(String)}, digest) GROUP BY digest",
        parameters={"p": project_id, "d": list(dict.fromkeys(row_digests))},
    ).result_rows
    return dict(rows)


def put_file(client: Any, project_id: str, digest: str, content: bytes) -> None:
    client.insert("file_blobs", [[project_id, digest, content]],
                  column_names=["project_id", "digest", "content"])  # fmt: skip


def read_file(client: Any, project_id: str, digest: str) -> bytes | None:
    rows = client.query(
        "SELECT content FROM file_blobs WHERE project_id = {p:String} AND digest = {d:String} LIMIT 1",
        parameters={"p": project_id, "d": digest}, query_formats={"String": "bytes"},
    ).result_rows  # fmt: skip
    return rows[0][0] if rows else None


_SIZES = {
    "objects": "SELECT sum(length(val)) FROM obj_versions FINAL WHERE project_id = {p:String}",
    "tables": "SELECT sum(length(val)) FROM (SELECT any(val) AS val FROM table_rows "
              "WHERE project_id = {p:String} GROUP BY digest)",
    "files": "SELECT sum(length(content)) FROM (SELECT any(content) AS content FROM file_blobs "
             "WHERE project_id = {p:String} GROUP BY digest)",
}  # fmt: skip


def storage_bytes(client: Any, kind: str, project_id: str) -> int:
    return int(client.query(_SIZES[kind], parameters={"p": project_id}).result_rows[0][0] or 0)
