"""The object, table and file statements of the SQLite store; each ``q_*`` runs on a store
thread with its connection first (:class:`~engine.server._sqlite_db.Database`).

Object versions are keyed by (project, object id, digest) and numbered per object from 0.
Aliases name a version (``latest`` among them: it follows the version last created, or
created again); when the version an alias names is deleted, ``latest`` falls back to the
last live version. Deletes are soft (``deleted_at_us``), so a version deleted and created
again keeps its number.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from engine.server._sqlite_db import Transaction
from engine.server._store import ObjectsQuery, ObjectVersion

T = TypeVar("T")
_IN_CHUNK = 500  # SQLite's default cap on bound parameters is 999 on old builds


def chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), _IN_CHUNK):
        yield items[i : i + _IN_CHUNK]


def marks(n: int) -> str:
    return ", ".join("?" * n)


# -- objects ------------------------------------------------------------------------------

_STORED = (
    "project_id", "object_id", "digest", "kind", "base_object_class", "leaf_object_class",
    "val", "wb_user_id", "created_at_us", "version_index", "deleted_at_us",
)  # fmt: skip
# the digest "latest" names for the object of the row aliased ``o``: its alias, else the
# last live version
_LATEST_DIGEST_SQL = (
    "coalesce((SELECT a.digest FROM obj_aliases a WHERE a.project_id = o.project_id "
    "AND a.object_id = o.object_id AND a.alias = 'latest'), "
    "(SELECT l.digest FROM obj_versions l WHERE l.project_id = o.project_id "
    "AND l.object_id = o.object_id AND l.deleted_at_us IS NULL "
    "ORDER BY l.version_index DESC LIMIT 1))"
)
_IS_LATEST = f"o.digest = {_LATEST_DIGEST_SQL}"
_SELECT = f"SELECT {', '.join('o.' + c for c in _STORED)}, {_IS_LATEST} FROM obj_versions o"


def _version(row: tuple) -> ObjectVersion:
    return ObjectVersion(**dict(zip(_STORED, row[:-1], strict=True)), is_latest=bool(row[-1]))


def q_put_object(conn: sqlite3.Connection, new: ObjectVersion) -> ObjectVersion:
    key = (new.project_id, new.object_id, new.digest)
    with Transaction(conn):
        found = conn.execute(
            "SELECT version_index FROM obj_versions "
            "WHERE project_id = ? AND object_id = ? AND digest = ?",
            key,
        ).fetchone()
        if found:
            conn.execute(
                "UPDATE obj_versions SET deleted_at_us = NULL "
                "WHERE project_id = ? AND object_id = ? AND digest = ?",
                key,
            )
        else:
            (index,) = conn.execute(
                "SELECT coalesce(max(version_index) + 1, 0) FROM obj_versions "
                "WHERE project_id = ? AND object_id = ?",
                key[:2],
            ).fetchone()
            row = {c: getattr(new, c) for c in _STORED} | {"version_index": index}
            conn.execute(
                f"INSERT INTO obj_versions ({', '.join(row)}) VALUES ({marks(len(row))})",
                tuple(row.values()),
            )
        _set_alias(conn, new.project_id, new.object_id, "latest", new.digest)
        return _read(conn, new.project_id, new.object_id, new.digest)  # type: ignore[return-value]


def _set_alias(conn: sqlite3.Connection, project_id: str, object_id: str, alias: str,
               digest: str) -> None:  # fmt: skip
    conn.execute(
        "INSERT OR REPLACE INTO obj_aliases VALUES (?, ?, ?, ?)",
        (project_id, object_id, alias, digest),
    )


def _is_version_number(version: str) -> bool:
    return version[:1] == "v" and version[1:].isdigit()


def _read(conn: sqlite3.Connection, project_id: str, object_id: str, version: str,
          include_deleted: bool = False) -> ObjectVersion | None:  # fmt: skip
    where = "o.project_id = ? AND o.object_id = ?"
    if not include_deleted:
        where += " AND o.deleted_at_us IS NULL"
    params: list[Any] = [project_id, object_id]
    if version == "latest":
        where += f" AND {_IS_LATEST}"
    elif _is_version_number(version):
        where += " AND o.version_index = ?"
        params.append(int(version[1:]))
    else:  # a digest, or an alias naming one
        where += (
            " AND o.digest = coalesce((SELECT a.digest FROM obj_aliases a WHERE "
            "a.project_id = o.project_id AND a.object_id = o.object_id AND a.alias = ?), ?)"
        )
        params += [version, version]
    row = conn.execute(f"{_SELECT} WHERE {where} LIMIT 1", params).fetchone()
    return _version(row) if row else None


def q_read_object(conn: sqlite3.Connection, project_id: str, object_id: str, version: str,
                  include_deleted: bool) -> ObjectVersion | None:  # fmt: skip
    return _read(conn, project_id, object_id, version, include_deleted)


_IN_FILTERS = (
    ("object_ids", "o.object_id"), ("base_object_classes", "o.base_object_class"),
    ("leaf_object_classes", "o.leaf_object_class"),
)  # fmt: skip
_SORT_COLUMNS = {"object_id": "o.object_id", "created_at": "o.created_at_us"}


def _objects_where(q: ObjectsQuery) -> tuple[list[str], list[Any]]:
    where, params = ["o.project_id = ?", "o.deleted_at_us IS NULL"], [q.project_id]
    for name, column in _IN_FILTERS:
        values = getattr(q, name)
        if values:  # weave: an empty list is no filter
            where.append(f"{column} IN ({marks(len(values))})")
            params.extend(values)
    if q.exclude_base_object_classes:  # a NULL class is not "not in" either, as in weave
        where.append(f"o.base_object_class NOT IN ({marks(len(q.exclude_base_object_classes))})")
        params.extend(q.exclude_base_object_classes)
    if q.is_op is not None:
        where.append("o.kind = 'op'" if q.is_op else "o.kind != 'op'")
    if q.latest_only:
        where.append(_IS_LATEST)
    if q.tags:
        where.append(f"o.digest IN (SELECT t.digest FROM obj_tags t WHERE t.project_id = "
                     f"o.project_id AND t.object_id = o.object_id AND t.tag IN ({marks(len(q.tags))}))")  # fmt: skip
        params.extend(q.tags)
    if q.aliases:
        where.append(_aliases_condition(q.aliases))
        params.extend(a for a in q.aliases if a != "latest")
    return where, params


def _aliases_condition(aliases: Sequence[str]) -> str:
    named = [a for a in aliases if a != "latest"]
    terms = [_IS_LATEST] if len(named) < len(aliases) else []
    if named:
        terms.append(f"o.digest IN (SELECT a.digest FROM obj_aliases a WHERE a.project_id = "
                     f"o.project_id AND a.object_id = o.object_id AND a.alias IN ({marks(len(named))}))")  # fmt: skip
    return f"({' OR '.join(terms)})"


def q_query_objects(conn: sqlite3.Connection, q: ObjectsQuery) -> list[ObjectVersion]:
    where, params = _objects_where(q)
    order = [f"{_SORT_COLUMNS[field]} {'DESC' if desc else 'ASC'}" for field, desc in q.sort_by]
    order += ["o.created_at_us ASC", "o.object_id ASC", "o.version_index ASC"]
    sql = f"{_SELECT} WHERE {' AND '.join(where)} ORDER BY {', '.join(order)} LIMIT ? OFFSET ?"
    limit = -1 if q.limit is None else q.limit
    return [_version(r) for r in conn.execute(sql, [*params, limit, q.offset])]


def q_delete_objects(
    conn: sqlite3.Connection, project_id: str, object_id: str, versions: list[str] | None,
    now_us: int,
) -> list[ObjectVersion]:  # fmt: skip
    with Transaction(conn):
        if versions is None:
            rows = conn.execute(
                f"{_SELECT} WHERE o.project_id = ? AND o.object_id = ? AND o.deleted_at_us IS NULL",
                (project_id, object_id),
            ).fetchall()
            gone = [_version(r) for r in rows]
        else:
            found = (_read(conn, project_id, object_id, v) for v in versions)
            gone = list({v.digest: v for v in found if v}.values())
        keys = [(project_id, object_id, v.digest) for v in gone]
        conn.executemany(
            "UPDATE obj_versions SET deleted_at_us = ? "
            "WHERE project_id = ? AND object_id = ? AND digest = ?",
            [(now_us, *key) for key in keys],
        )
        for table in ("obj_aliases", "obj_tags"):
            conn.executemany(
                f"DELETE FROM {table} WHERE project_id = ? AND object_id = ? AND digest = ?", keys
            )
    return gone


def _live(conn: sqlite3.Connection, project_id: str, object_id: str, digest: str) -> bool:
    return conn.execute(
        "SELECT 1 FROM obj_versions WHERE project_id = ? AND object_id = ? AND digest = ? "
        "AND deleted_at_us IS NULL",
        (project_id, object_id, digest),
    ).fetchone() is not None


def q_set_aliases(conn: sqlite3.Connection, project_id: str, object_id: str, digest: str,
                  aliases: list[str]) -> bool:  # fmt: skip
    with Transaction(conn):
        if not _live(conn, project_id, object_id, digest):
            return False
        for alias in aliases:
            _set_alias(conn, project_id, object_id, alias, digest)
        return True


def q_remove_aliases(conn: sqlite3.Connection, project_id: str, object_id: str,
                     aliases: list[str]) -> None:  # fmt: skip
    conn.executemany(
        "DELETE FROM obj_aliases WHERE project_id = ? AND object_id = ? AND alias = ?",
        [(project_id, object_id, alias) for alias in aliases],
    )


def q_add_tags(conn: sqlite3.Connection, project_id: str, object_id: str, digest: str,
               tags: list[str]) -> bool:  # fmt: skip
    with Transaction(conn):
        if not _live(conn, project_id, object_id, digest):
            return False
        conn.executemany(
            "INSERT OR IGNORE INTO obj_tags VALUES (?, ?, ?, ?)",
            [(project_id, object_id, digest, tag) for tag in tags],
        )
        return True


def q_remove_tags(conn: sqlite3.Connection, project_id: str, object_id: str, digest: str,
                  tags: list[str]) -> None:  # fmt: skip
    conn.executemany(
        "DELETE FROM obj_tags WHERE project_id = ? AND object_id = ? AND digest = ? AND tag = ?",
        [(project_id, object_id, digest, tag) for tag in tags],
    )


def q_names(conn: sqlite3.Connection, what: str, project_id: str) -> list[str]:
    """Distinct tags (``what="tag"``) or aliases (``"alias"``) used in a project, sorted."""
    table = {"tag": "obj_tags", "alias": "obj_aliases"}[what]
    sql = f"SELECT DISTINCT {what} FROM {table} WHERE project_id = ? ORDER BY {what}"
    return [row[0] for row in conn.execute(sql, (project_id,))]


def q_labels(conn: sqlite3.Connection, project_id: str,
             keys: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[list[str], list[str]]]:  # fmt: skip
    """``(object_id, digest) -> (tags, aliases)`` of the given versions, each sorted."""
    labels: dict[tuple[str, str], tuple[list[str], list[str]]] = {k: ([], []) for k in keys}
    object_ids = list({object_id for object_id, _ in keys})
    for chunk in chunks(object_ids):
        for i, (table, column) in enumerate((("obj_tags", "tag"), ("obj_aliases", "alias"))):
            sql = (f"SELECT object_id, digest, {column} FROM {table} WHERE project_id = ? "
                   f"AND object_id IN ({marks(len(chunk))}) ORDER BY {column}")  # fmt: skip
            for object_id, digest, name in conn.execute(sql, (project_id, *chunk)):
                if (object_id, digest) in labels:
                    labels[(object_id, digest)][i].append(name)
    return labels


# -- tables -------------------------------------------------------------------------------


def q_put_table(
    conn: sqlite3.Connection, project_id: str, digest: str, row_digests_json: str,
    rows: list[tuple[str, str]],
) -> None:  # fmt: skip
    """Store new rows ``(digest, val_json)`` and the table (both idempotent) in one go."""
    with Transaction(conn):
        conn.executemany(
            "INSERT OR IGNORE INTO table_rows VALUES (?, ?, ?)",
            [(project_id, d, v) for d, v in rows],
        )
        conn.execute(
            "INSERT OR IGNORE INTO table_versions VALUES (?, ?, ?)",
            (project_id, digest, row_digests_json),
        )


def q_table_row_digests(conn: sqlite3.Connection, project_id: str, digest: str) -> str | None:
    row = conn.execute(
        "SELECT row_digests FROM table_versions WHERE project_id = ? AND digest = ?",
        (project_id, digest),
    ).fetchone()
    return row[0] if row else None


def q_rows(conn: sqlite3.Connection, project_id: str, digests: Sequence[str]) -> dict[str, str]:
    """``digest -> val_json`` of the stored rows among ``digests``."""
    found: dict[str, str] = {}
    for chunk in chunks(list(dict.fromkeys(digests))):
        found.update(
            conn.execute(
                f"SELECT digest, val FROM table_rows WHERE project_id = ? "
                f"AND digest IN ({marks(len(chunk))})",
                (project_id, *chunk),
            ).fetchall()
        )
    return found


# -- files and sizes ----------------------------------------------------------------------


def q_put_file(conn: sqlite3.Connection, project_id: str, digest: str, content: bytes) -> None:
    conn.execute("INSERT OR IGNORE INTO file_blobs VALUES (?, ?, ?)", (project_id, digest, content))


def q_file(conn: sqlite3.Connection, project_id: str, digest: str) -> bytes | None:
    row = conn.execute(
        "SELECT content FROM file_blobs WHERE project_id = ? AND digest = ?", (project_id, digest)
    ).fetchone()
    return row[0] if row else None


_SIZE_SQL = {
    "objects": "SELECT coalesce(sum(length(val)), 0) FROM obj_versions WHERE project_id = ?",
    "tables": "SELECT coalesce(sum(length(val)), 0) FROM table_rows WHERE project_id = ?",
    "files": "SELECT coalesce(sum(length(content)), 0) FROM file_blobs WHERE project_id = ?",
    "trace": (
        "SELECT coalesce(sum(length(coalesce(inputs, '')) + length(coalesce(output, '')) "
        "+ length(coalesce(attributes, '')) + length(coalesce(summary, ''))), 0) "
        "FROM calls WHERE project_id = ? AND op_name IS NOT NULL"
    ),
}


def q_storage_bytes(conn: sqlite3.Connection, what: str, project_id: str) -> int:
    return int(conn.execute(_SIZE_SQL[what], (project_id,)).fetchone()[0])
