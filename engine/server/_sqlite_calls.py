"""The call statements of the SQLite store; each ``q_*`` runs on a store thread with its
connection first (:class:`~engine.server._sqlite_db.Database`).

Calls are rows keyed by (project_id, id). A start, an end and a complete call each upsert
only their own columns, so they merge in any order and a retried batch rewrites the same
values instead of adding rows. A row that has seen only its end has no ``op_name`` yet and
stays invisible to reads until its start arrives.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from engine.server._rows import (
    COMPLETE_COLUMNS,
    END_COLUMNS,
    START_COLUMNS,
    Complete,
    End,
    Start,
    complete_row,
    end_row,
    start_row,
)
from engine.server._sqlite_db import Transaction
from engine.server._store import ThreadTurn


def _upsert_sql(columns: Sequence[str], merge: dict[str, str] | None = None) -> str:
    """INSERT … ON CONFLICT that overwrites only ``columns`` (``merge`` overrides per column)."""
    merge = merge or {}
    keys = ("project_id", "id", *columns)
    updates = ", ".join(f"{c} = {merge.get(c, 'excluded.' + c)}" for c in columns)
    return (
        f"INSERT INTO calls ({', '.join(keys)}) VALUES ({', '.join('?' * len(keys))}) "
        f"ON CONFLICT (project_id, id) DO UPDATE SET {updates}"
    )


_START_SQL = _upsert_sql(START_COLUMNS)
# an end carries trace_id/started_at only as hints: never overwrite what the start said
_END_SQL = _upsert_sql(
    END_COLUMNS,
    {
        "trace_id": "coalesce(calls.trace_id, excluded.trace_id)",
        "started_at_us": "coalesce(calls.started_at_us, excluded.started_at_us)",
    },
)
_COMPLETE_SQL = _upsert_sql(COMPLETE_COLUMNS)


def q_insert_batches(
    conn: sqlite3.Connection, batches: list[tuple[list[Start], list[End], list[Complete]]]
) -> None:
    """Upsert the calls of several requests' batches in one transaction, in order; rows are
    built here, on the writer thread."""
    with Transaction(conn):
        for starts, ends, completes in batches:
            for sql, to_row, calls in (
                (_START_SQL, start_row, starts),
                (_END_SQL, end_row, ends),
                (_COMPLETE_SQL, complete_row, completes),
            ):
                if calls:
                    conn.executemany(sql, map(to_row, calls))


# the calls and every call below them (parent_id links), as weave deletes a subtree
_SUBTREE_SQL = """
WITH RECURSIVE doomed(id) AS (
    SELECT id FROM calls WHERE project_id = ? AND op_name IS NOT NULL AND id IN ({marks})
    UNION
    SELECT c.id FROM calls c JOIN doomed d ON c.parent_id = d.id
    WHERE c.project_id = ? AND c.op_name IS NOT NULL
)
SELECT id FROM doomed
"""
_IN_CHUNK = 500  # SQLite's default cap on bound parameters is 999 on old builds


def q_delete_calls(conn: sqlite3.Connection, project_id: str, call_ids: list[str]) -> list[str]:
    with Transaction(conn):
        doomed: dict[str, None] = {}
        unique = list(dict.fromkeys(call_ids))
        for i in range(0, len(unique), _IN_CHUNK):
            chunk = unique[i : i + _IN_CHUNK]
            sql = _SUBTREE_SQL.format(marks=", ".join("?" * len(chunk)))
            doomed.update((row[0], None) for row in conn.execute(sql, (project_id, *chunk, project_id)))
        conn.executemany(
            "DELETE FROM calls WHERE project_id = ? AND id = ?",
            [(project_id, call_id) for call_id in doomed],
        )
    return list(doomed)


# a chunk of the project's calls that started before the cutoff (the start-time index), or
# that only their end has reached and that ended before it (the end-time index; the start
# time an end carries is a hint, which the ClickHouse store does not keep)
_BEFORE_SQL = """
DELETE FROM calls WHERE seq IN (
    SELECT seq FROM calls WHERE project_id = ? AND started_at_us < ? AND op_name IS NOT NULL
    LIMIT ?
)"""
_LONE_ENDS_BEFORE_SQL = """
DELETE FROM calls WHERE seq IN (
    SELECT seq FROM calls WHERE project_id = ? AND ended_at_us < ? AND op_name IS NULL LIMIT ?
)"""


def q_delete_before(conn: sqlite3.Connection, project_id: str, cutoff_us: int, limit: int) -> int:
    with Transaction(conn):
        deleted = conn.execute(_BEFORE_SQL, (project_id, cutoff_us, limit)).rowcount
        if deleted < limit:
            deleted += conn.execute(
                _LONE_ENDS_BEFORE_SQL, (project_id, cutoff_us, limit - deleted)).rowcount
    return deleted


def q_set_retention(conn: sqlite3.Connection, project_id: str, days: int | None,
                    updated_at_us: int, user_id: str | None) -> None:
    with Transaction(conn):
        conn.execute("INSERT OR REPLACE INTO project_settings VALUES (?, ?, ?, ?)",
                     (project_id, days, updated_at_us, user_id))


def q_set_display_name(
    conn: sqlite3.Connection, project_id: str, call_id: str, name: str | None
) -> bool:
    cur = conn.execute(
        "UPDATE calls SET display_name = ? WHERE project_id = ? AND id = ? AND op_name IS NOT NULL",
        (name, project_id, call_id),
    )
    return cur.rowcount > 0


def q_seq_of(conn: sqlite3.Connection, project_id: str, call_id: str) -> int | None:
    row = conn.execute("SELECT seq FROM calls WHERE project_id = ? AND id = ?",
                       (project_id, call_id)).fetchone()  # fmt: skip
    return None if row is None else row[0]


def q_fetchall(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[tuple]:
    return conn.execute(sql, params).fetchall()


def q_thread_turns(
    conn: sqlite3.Connection, project_id: str, thread_ids: list[str] | None, max_turns: int
) -> list[ThreadTurn]:
    where, params = "project_id = ? AND thread_id IS NOT NULL AND id = turn_id", [project_id]
    if thread_ids is not None:
        where += f" AND thread_id IN ({', '.join('?' * len(thread_ids))})"
        params.extend(thread_ids)
    sql = (
        "SELECT thread_id, id, started_at_us, ended_at_us FROM calls "
        f"WHERE {where} AND op_name IS NOT NULL ORDER BY thread_id, started_at_us, seq LIMIT ?"
    )
    return [ThreadTurn(*row) for row in conn.execute(sql, [*params, max_turns])]


def q_trace_bytes(conn: sqlite3.Connection, project_id: str, trace_ids: list[str]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    unique = list(dict.fromkeys(trace_ids))
    for i in range(0, len(unique), _IN_CHUNK):
        chunk = unique[i : i + _IN_CHUNK]
        sql = (
            "SELECT trace_id, sum(length(coalesce(attributes, '')) + length(coalesce(inputs, '')) "
            "+ length(coalesce(output, '')) + length(coalesce(summary, ''))) FROM calls "
            f"WHERE project_id = ? AND op_name IS NOT NULL AND trace_id IN ({', '.join('?' * len(chunk))}) "
            "GROUP BY trace_id"
        )
        sizes.update(conn.execute(sql, (project_id, *chunk)).fetchall())
    return sizes
