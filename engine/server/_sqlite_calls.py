"""SQLite call store: one writer thread, one reader thread, WAL so reads never block writes.

Calls are rows keyed by (project_id, id). A start, an end and a complete call each upsert
only their own columns, so they merge in any order and a retried batch rewrites the same
values instead of adding rows. A row that has seen only its end has no ``op_name`` yet and
stays invisible to reads until its start arrives.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from engine.server._rows import (
    COMPLETE_COLUMNS,
    END_COLUMNS,
    START_COLUMNS,
    Complete,
    End,
    Page,
    Selection,
    Start,
    complete_row,
    end_row,
    start_row,
)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    seq INTEGER PRIMARY KEY,
    project_id TEXT NOT NULL,
    id TEXT NOT NULL,
    op_name TEXT,
    display_name TEXT,
    trace_id TEXT,
    parent_id TEXT,
    thread_id TEXT,
    turn_id TEXT,
    started_at_us INTEGER,
    attributes TEXT,
    inputs TEXT,
    otel_dump TEXT,
    wb_user_id TEXT,
    wb_run_id TEXT,
    wb_run_step INTEGER,
    ended_at_us INTEGER,
    exception TEXT,
    output TEXT,
    summary TEXT,
    wb_run_step_end INTEGER,
    UNIQUE (project_id, id)
);
CREATE INDEX IF NOT EXISTS calls_trace ON calls (project_id, trace_id);
"""


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


def create_db_file(path: Path) -> None:
    """Create the database file (and its folder) owner-only before SQLite opens it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA cache_size=-65536")  # 64 MiB: keeps the (project_id, id) index hot
    return conn


class SQLiteStore:
    """Async facade over a SQLite file; every statement runs on the store's own threads."""

    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        create_db_file(path)
        self.path = path
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="engine-store-writer")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="engine-store-reader")
        self._wconn = _connect(path)
        self._wconn.executescript(_SCHEMA)
        self._rconn = _connect(path)

    async def _on(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    # -- writes -------------------------------------------------------------------------

    async def write_calls(self, starts: list[Start], ends: list[End], completes: list[Complete]):
        """Upsert calls in one transaction; rows are built on the writer thread, off the loop."""
        await self._on(self._writer, self._write_calls, starts, ends, completes)

    def _write_calls(self, starts: list[Start], ends: list[End], completes: list[Complete]):
        with self._transaction():
            for sql, to_row, calls in (
                (_START_SQL, start_row, starts),
                (_END_SQL, end_row, ends),
                (_COMPLETE_SQL, complete_row, completes),
            ):
                if calls:
                    self._wconn.executemany(sql, map(to_row, calls))

    def _transaction(self):
        return Transaction(self._wconn)

    async def delete_calls(self, project_id: str, call_ids: list[str]) -> int:
        return await self._on(self._writer, self._delete_calls, project_id, call_ids)

    def _delete_calls(self, project_id: str, call_ids: list[str]) -> int:
        with self._transaction():
            cur = self._wconn.executemany(
                "DELETE FROM calls WHERE project_id = ? AND id = ? AND op_name IS NOT NULL",
                [(project_id, cid) for cid in dict.fromkeys(call_ids)],
            )
            return cur.rowcount

    async def update_display_name(self, project_id: str, call_id: str, name: str | None) -> bool:
        return await self._on(self._writer, self._update_display_name, project_id, call_id, name)

    def _update_display_name(self, project_id: str, call_id: str, name: str | None) -> bool:
        cur = self._wconn.execute(
            "UPDATE calls SET display_name = ? WHERE project_id = ? AND id = ? "
            "AND op_name IS NOT NULL",
            (name, project_id, call_id),
        )
        return cur.rowcount > 0

    # -- reads --------------------------------------------------------------------------

    async def select_calls(self, selection: Selection, page: Page) -> list[tuple]:
        sql, params = selection.select_sql(page)
        return await self._on(self._reader, self._fetchall, sql, params)

    async def count_calls(self, selection: Selection) -> int:
        sql, params = selection.count_sql()
        rows = await self._on(self._reader, self._fetchall, sql, params)
        return int(rows[0][0])

    def _fetchall(self, sql: str, params: Sequence[Any]) -> list[tuple]:
        return self._rconn.execute(sql, params).fetchall()

    async def close(self) -> None:
        for pool, conn in ((self._writer, self._wconn), (self._reader, self._rconn)):
            await self._on(pool, conn.close)
            pool.shutdown(wait=True)


class Transaction:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any error so a batch lands whole or not at all."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        self._conn.execute("ROLLBACK" if exc_type else "COMMIT")
