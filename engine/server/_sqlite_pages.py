"""Offset pages of calls read from where the previous page ended, when nothing changed.

weave's client reads a long list of calls (``client.get_calls()``, its ``to_pandas()``) as
pages of 1,000 with growing offsets, each its own request. Every page stepped over every
call before it: reading 2M calls took 2,000 pages of up to ~0.6 s each. The store now
remembers where each full page ordered by start time ended (the last call's
``(started_at_us, seq)``, the database's ``PRAGMA data_version`` before the page was read)
under the query and the offset the next page would ask for; that next page reads from
there through the start-time index instead (``(started_at_us, seq) > (?, ?)``), as long as
no other connection has committed since — the same rows the offset would give, checked
before and after the read; otherwise the offset answers as before.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from engine.server._calls_sql import Selection, Sql
from engine.server._rows import SELECT_COLUMNS, SQLITE_SELECT
from engine.server._store import CallsQuery

MAX_REMEMBERED = 256  # page ends kept (the oldest go first)
MAX_PAGE_ROWS = 10_000  # a continued page is read whole before it is answered
_STARTED_AT = SELECT_COLUMNS.index("started_at_us")

# (where, its params, order) -> the offset a next page asks for -> (started_at_us, seq, data_version)
_Key = tuple[str, tuple[Any, ...], str, int]


def direction(query: CallsQuery) -> str | None:
    """``ASC`` / ``DESC`` for a query ordered by start time alone (the default order is
    ``started_at_us ASC, seq ASC``), else None."""
    if not query.sort_by:
        return "ASC"
    if len(query.sort_by) == 1 and query.sort_by[0].field == "started_at":
        return query.sort_by[0].direction.upper()
    return None


def pageable(query: CallsQuery) -> bool:
    """A page whose end is worth remembering (or that may continue one)."""
    return query.limit is not None and query.limit <= MAX_PAGE_ROWS and direction(query) is not None


class PageEnds:
    """Where recent full pages ended, per query and next offset."""

    def __init__(self) -> None:
        self._ends: OrderedDict[_Key, tuple[int, int, int]] = OrderedDict()

    @staticmethod
    def _key(selection: Selection, offset: int) -> _Key:
        return (selection.where.text, selection.where.params, selection.order.text, offset)

    def continuation(self, selection: Selection, query: CallsQuery) -> tuple[int, Sql] | None:
        """(the data version it holds for, the SELECT of the page from where the previous
        one ended) when one ended at ``query.offset``."""
        if not query.offset or not pageable(query):
            return None
        end = self._ends.get(self._key(selection, query.offset))
        if end is None:
            return None
        started_at_us, seq, version = end
        beyond = ">" if direction(query) == "ASC" else "<"
        return version, Sql(
            f"SELECT {', '.join(SQLITE_SELECT)} FROM calls WHERE {selection.where.text} "
            f"AND (started_at_us, seq) {beyond} (?, ?) ORDER BY {selection.order.text} LIMIT ?",
            (*selection.where.params, started_at_us, seq, *selection.order.params, query.limit),
        )

    def remember(self, selection: Selection, query: CallsQuery, rows: int, last_row: tuple,
                 seq: int, version: int) -> None:  # fmt: skip
        """A page of ``rows`` rows ended with ``last_row`` (its ``seq``), read at ``version``."""
        if query.limit is None or rows < query.limit:  # the last page: nothing follows
            return
        key = self._key(selection, query.offset + rows)
        self._ends[key] = (last_row[_STARTED_AT], seq, version)
        self._ends.move_to_end(key)
        while len(self._ends) > MAX_REMEMBERED:
            self._ends.popitem(last=False)
