"""The SQLite store's page after one read recently (``engine/server/_page_ends.py``): read
through the start-time index from where that page ended (``(started_at_us, seq) > (?, ?)``)
while the database is unchanged: ``PRAGMA data_version`` of one connection, which changes
whenever another connection (the writer, another process) commits, the same before the
remembered page was read and before and after this one (checked by the store).
"""

from __future__ import annotations

from engine.server._calls_sql import Selection, Sql
from engine.server._page_ends import End, direction
from engine.server._rows import sqlite_projection
from engine.server._store import CallsQuery

MAX_PAGE_ROWS = 10_000  # the longest page whose end is remembered


def pageable(query: CallsQuery) -> bool:
    """A page whose end is worth remembering (or that may continue one)."""
    return query.limit is not None and query.limit <= MAX_PAGE_ROWS and direction(query) is not None


def read_on_sql(selection: Selection, query: CallsQuery, end: End) -> Sql:
    """The SELECT of ``query``'s page from where the page before it ended."""
    started_at_us, seq, _ = end
    beyond = ">" if direction(query) == "ASC" else "<"
    return Sql(
        f"SELECT {sqlite_projection(query.json_columns)} FROM calls WHERE {selection.where.text} "
        f"AND (started_at_us, seq) {beyond} (?, ?) ORDER BY {selection.order.text} LIMIT ?",
        (*selection.where.params, started_at_us, seq, *selection.order.params, query.limit),
    )
