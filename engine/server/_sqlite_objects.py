"""SQLite storage for everything but call ingest: objects, tables, files, feedback, costs, actions.

It opens its own connection to the calls store's database file (WAL lets both write; these
writes are rare and short, and ``busy_timeout`` orders them behind call batches), on one
thread of its own, so call ingest never waits for an object query. With the ``count``
store (no file) it keeps its tables in memory: a benchmark's ``weave.init`` still
publishes its ops. Its schema is versioned in ``schema_versions`` under the component
name ``more``; the calls tables are not touched.

Every function named ``q_*`` runs on the store thread with the connection as its first
argument (``await store.run(q_fn, …)``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from engine.server._sqlite_calls import Transaction as transaction

T = TypeVar("T")

_COMPONENT = "more"
# index i holds the script that takes the schema from version i to i + 1
_MIGRATIONS = (
    """
    CREATE TABLE obj_versions (
        project_id TEXT NOT NULL,
        object_id TEXT NOT NULL,
        digest TEXT NOT NULL,
        version_index INTEGER NOT NULL,
        kind TEXT NOT NULL,
        base_object_class TEXT,
        leaf_object_class TEXT,
        val TEXT NOT NULL,
        wb_user_id TEXT,
        created_at_us INTEGER NOT NULL,
        deleted_at_us INTEGER,
        PRIMARY KEY (project_id, object_id, digest),
        UNIQUE (project_id, object_id, version_index)
    );
    CREATE TABLE table_rows (
        project_id TEXT NOT NULL, digest TEXT NOT NULL, val TEXT NOT NULL,
        PRIMARY KEY (project_id, digest)
    );
    CREATE TABLE table_versions (
        project_id TEXT NOT NULL, digest TEXT NOT NULL, row_digests TEXT NOT NULL,
        PRIMARY KEY (project_id, digest)
    );
    CREATE TABLE file_blobs (
        project_id TEXT NOT NULL, digest TEXT NOT NULL, content BLOB NOT NULL,
        PRIMARY KEY (project_id, digest)
    );
    CREATE TABLE feedback (
        project_id TEXT NOT NULL, id TEXT NOT NULL, created_at_us INTEGER NOT NULL,
        doc TEXT NOT NULL, PRIMARY KEY (project_id, id)
    );
    CREATE TABLE costs (
        project_id TEXT NOT NULL, id TEXT NOT NULL, created_at_us INTEGER NOT NULL,
        doc TEXT NOT NULL, PRIMARY KEY (project_id, id)
    );
    CREATE TABLE action_runs (
        project_id TEXT NOT NULL, action_ref TEXT NOT NULL, call_id TEXT NOT NULL,
        created_at_us INTEGER NOT NULL, PRIMARY KEY (project_id, action_ref, call_id)
    );
    """,
)
# SQLite's default cap on bound parameters is 999 on old builds: stay under it
_IN_CHUNK = 500
DOC_TABLES = frozenset({"feedback", "costs"})


def _migrate(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, version INTEGER)"
    )
    with transaction(conn):
        row = conn.execute(
            "SELECT version FROM schema_versions WHERE component = ?", (_COMPONENT,)
        ).fetchone()
        current = row[0] if row else 0
        for script in _MIGRATIONS[current:]:
            for statement in filter(str.strip, script.split(";")):
                conn.execute(statement)
        conn.execute(
            "INSERT OR REPLACE INTO schema_versions VALUES (?, ?)", (_COMPONENT, len(_MIGRATIONS))
        )


class MoreStore:
    """One connection on one thread; ``path=None`` keeps the tables in memory."""

    def __init__(self, path: Path | None) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="engine-store-more")
        self.conn = sqlite3.connect(
            path if path else ":memory:", check_same_thread=False, isolation_level=None
        )
        self.conn.execute("PRAGMA busy_timeout=10000")
        if path:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
        _migrate(self.conn)
        # threads and project stats read the calls table, which only a file store has
        self.has_calls = bool(
            self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'calls'").fetchone()
        )

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, self.conn, *args)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self.conn.close)
        self._pool.shutdown(wait=True)


MORE = web.AppKey("engine_more_store", MoreStore)


def attach_more_store(app: web.Application, db_path: Path | None) -> None:
    """Give ``app`` a :class:`MoreStore` on ``db_path`` (memory when None), closed on cleanup."""
    app[MORE] = MoreStore(db_path)

    async def close(app: web.Application) -> None:
        await app[MORE].close()

    app.on_cleanup.append(close)


def more_of(request: web.Request) -> MoreStore:
    return request.app[MORE]


def _chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), _IN_CHUNK):
        yield items[i : i + _IN_CHUNK]


def _marks(n: int) -> str:
    return ", ".join("?" * n)


# -- objects ------------------------------------------------------------------------------

OBJ_COLUMNS = (
    "project_id", "object_id", "digest", "version_index", "kind", "base_object_class",
    "leaf_object_class", "val", "wb_user_id", "created_at_us", "deleted_at_us", "is_latest",
)  # fmt: skip
# the latest live version index of the object of the row aliased ``o``
LATEST_VERSION_SQL = (
    "(SELECT max(l.version_index) FROM obj_versions l WHERE l.project_id = o.project_id "
    "AND l.object_id = o.object_id AND l.deleted_at_us IS NULL)"
)
_IS_LATEST = f"o.version_index = {LATEST_VERSION_SQL}"
_OBJ_SELECT = f"SELECT {', '.join(OBJ_COLUMNS[:-1])}, {_IS_LATEST} FROM obj_versions o"


def q_put_object(conn: sqlite3.Connection, row: dict[str, Any]) -> int:
    """Store a version unless its digest exists (then revive it); returns its version index."""
    key = (row["project_id"], row["object_id"], row["digest"])
    with transaction(conn):
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
            return found[0]
        (index,) = conn.execute(
            "SELECT coalesce(max(version_index) + 1, 0) FROM obj_versions "
            "WHERE project_id = ? AND object_id = ?",
            key[:2],
        ).fetchone()
        columns = [c for c in OBJ_COLUMNS if c not in ("version_index", "is_latest")]
        conn.execute(
            f"INSERT INTO obj_versions (version_index, {', '.join(columns)}) "
            f"VALUES (?, {_marks(len(columns))})",
            (index, *(row.get(c) for c in columns)),
        )
        return index


def q_read_object(
    conn: sqlite3.Connection, project_id: str, object_id: str, version: str
) -> tuple | None:
    """A live version by digest, by ``latest``, or by ``v<N>`` (its version index)."""
    where = "o.project_id = ? AND o.object_id = ? AND o.deleted_at_us IS NULL"
    params: list[Any] = [project_id, object_id]
    if version == "latest":
        order = " ORDER BY o.version_index DESC"
    elif version[:1] == "v" and version[1:].isdigit():
        where, order = where + " AND o.version_index = ?", ""
        params.append(int(version[1:]))
    else:
        where, order = where + " AND o.digest = ?", ""
        params.append(version)
    return conn.execute(f"{_OBJ_SELECT} WHERE {where}{order} LIMIT 1", params).fetchone()


def q_query_objects(
    conn: sqlite3.Connection, where: list[str], params: list[Any], order: str, page: tuple
) -> list[tuple]:
    sql = f"{_OBJ_SELECT} WHERE {' AND '.join(where)} ORDER BY {order} LIMIT ? OFFSET ?"
    return conn.execute(sql, [*params, *page]).fetchall()


def q_delete_objects(
    conn: sqlite3.Connection, project_id: str, object_id: str, versions: list[str] | None,
    now_us: int,
) -> list[tuple]:  # fmt: skip
    """Mark versions deleted (every live one when ``versions`` is None); returns what went."""
    with transaction(conn):
        if versions is None:
            rows = conn.execute(
                f"{_OBJ_SELECT} WHERE o.project_id = ? AND o.object_id = ? "
                "AND o.deleted_at_us IS NULL",
                (project_id, object_id),
            ).fetchall()
        else:
            found = (q_read_object(conn, project_id, object_id, v) for v in versions)
            rows = list({row[2]: row for row in found if row}.values())
        conn.executemany(
            "UPDATE obj_versions SET deleted_at_us = ? "
            "WHERE project_id = ? AND object_id = ? AND digest = ?",
            [(now_us, project_id, object_id, row[2]) for row in rows],
        )
    return rows


# -- tables -------------------------------------------------------------------------------


def q_put_table(
    conn: sqlite3.Connection, project_id: str, digest: str, rows: list[tuple[str, str]],
    row_digests_json: str,
) -> None:  # fmt: skip
    """Store new rows ``(digest, val_json)`` and the table (both idempotent) in one go."""
    with transaction(conn):
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
    for chunk in _chunks(list(dict.fromkeys(digests))):
        found.update(
            conn.execute(
                f"SELECT digest, val FROM table_rows WHERE project_id = ? "
                f"AND digest IN ({_marks(len(chunk))})",
                (project_id, *chunk),
            ).fetchall()
        )
    return found


# -- files --------------------------------------------------------------------------------


def q_put_file(conn: sqlite3.Connection, project_id: str, digest: str, content: bytes) -> None:
    conn.execute("INSERT OR IGNORE INTO file_blobs VALUES (?, ?, ?)", (project_id, digest, content))


def q_file(conn: sqlite3.Connection, project_id: str, digest: str) -> bytes | None:
    row = conn.execute(
        "SELECT content FROM file_blobs WHERE project_id = ? AND digest = ?", (project_id, digest)
    ).fetchone()
    return row[0] if row else None


# -- feedback and costs: JSON documents keyed by (project, id) ----------------------------


def _doc_table(table: str) -> str:
    if table not in DOC_TABLES:  # the name goes into SQL text
        raise ValueError(f"unknown document table {table!r}")
    return table


def q_put_docs(conn: sqlite3.Connection, table: str, docs: list[tuple[str, str, int, str]]):
    """Insert ``(project_id, id, created_at_us, doc_json)``; an id already stored keeps its
    first document. Returns the stored ``(created_at_us, doc_json)`` for each, in order."""
    name = _doc_table(table)
    with transaction(conn):
        conn.executemany(f"INSERT OR IGNORE INTO {name} VALUES (?, ?, ?, ?)", docs)
        return [
            conn.execute(
                f"SELECT created_at_us, doc FROM {name} WHERE project_id = ? AND id = ?",
                (project_id, doc_id),
            ).fetchone()
            for project_id, doc_id, _, _ in docs
        ]


def q_scan_docs(conn: sqlite3.Connection, table: str, project_id: str) -> list[str]:
    """Every document of a project, oldest first (creation order)."""
    return [
        row[0]
        for row in conn.execute(
            f"SELECT doc FROM {_doc_table(table)} WHERE project_id = ? "
            "ORDER BY created_at_us, rowid",
            (project_id,),
        )
    ]


def q_delete_docs(conn: sqlite3.Connection, table: str, project_id: str, ids: list[str]) -> int:
    with transaction(conn):
        cur = conn.executemany(
            f"DELETE FROM {_doc_table(table)} WHERE project_id = ? AND id = ?",
            [(project_id, i) for i in ids],
        )
        return cur.rowcount


def q_replace_doc(
    conn: sqlite3.Connection, table: str, project_id: str, old_id: str,
    new: tuple[str, str, int, str],
) -> bool:  # fmt: skip
    """Delete ``old_id`` and insert ``new`` atomically; False (nothing done) if ``old_id`` is gone."""
    name = _doc_table(table)
    with transaction(conn):
        cur = conn.execute(
            f"DELETE FROM {name} WHERE project_id = ? AND id = ?", (project_id, old_id)
        )
        if cur.rowcount == 0:
            return False
        conn.execute(f"INSERT OR REPLACE INTO {name} VALUES (?, ?, ?, ?)", new)
        return True


# -- actions, stats, threads --------------------------------------------------------------


def q_record_action_runs(conn: sqlite3.Connection, runs: list[tuple[str, str, str, int]]) -> None:
    with transaction(conn):
        conn.executemany("INSERT OR IGNORE INTO action_runs VALUES (?, ?, ?, ?)", runs)


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
    """Bytes of stored JSON text (or file content) of one kind in a project."""
    return int(conn.execute(_SIZE_SQL[what], (project_id,)).fetchone()[0])


def q_thread_turns(
    conn: sqlite3.Connection, project_id: str, thread_ids: list[str] | None, max_turns: int
) -> list[tuple]:
    """Turn calls (``id == turn_id``) of threads: ``(thread_id, id, started_us, ended_us)``,
    grouped by thread, at most ``max_turns`` rows."""
    where, params = "project_id = ? AND thread_id IS NOT NULL AND id = turn_id", [project_id]
    if thread_ids is not None:
        where += f" AND thread_id IN ({_marks(len(thread_ids))})"
        params.extend(thread_ids)
    sql = (
        "SELECT thread_id, id, started_at_us, ended_at_us FROM calls "
        f"WHERE {where} AND op_name IS NOT NULL ORDER BY thread_id, started_at_us, seq LIMIT ?"
    )
    return conn.execute(sql, [*params, max_turns]).fetchall()
