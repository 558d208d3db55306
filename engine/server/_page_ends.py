"""Where recent full pages of calls ordered by start time ended, for both stores.

weave's client reads a long list of calls (``client.get_calls()``, its ``to_pandas()``) as
pages of 1,000 with growing offsets, each its own request; each page stepped over every
call before it, so reading N calls cost O(N²). A store remembers, per query (without its
limit and offset) and the offset the next page will ask for, the last call's start time and
arrival ``seq`` and what the store's data was (a version that any write changes); the next
page is read from there when the data is still the same (``engine/server/_sqlite_pages.py``,
``engine/server/clickhouse/_pages.py``), and through the offset otherwise.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import msgspec

from engine.server._store import CallsQuery

MAX_REMEMBERED = 256  # page ends kept (the oldest go first)
_encode = msgspec.json.Encoder().encode

End = tuple[int, int, Any]  # started_at_us, seq, the data's version when the page was read


def direction(query: CallsQuery) -> str | None:
    """``ASC`` / ``DESC`` for a query ordered by start time alone (the default order is
    start time, then arrival), else None."""
    if not query.sort_by:
        return "ASC"
    if len(query.sort_by) == 1 and query.sort_by[0].field == "started_at":
        return query.sort_by[0].direction.upper()
    return None


def _key(query: CallsQuery, offset: int) -> tuple[bytes, int]:
    return _encode(msgspec.structs.replace(query, limit=None, offset=0)), offset


class PageEnds:
    """Where recent full pages ended, per query and next offset."""

    def __init__(self) -> None:
        self._ends: OrderedDict[tuple[bytes, int], End] = OrderedDict()

    def get(self, query: CallsQuery) -> End | None:
        """Where the page before ``query``'s ended, if one ended at its offset."""
        return self._ends.get(_key(query, query.offset)) if query.offset else None

    def put(self, query: CallsQuery, rows: int, end: End) -> None:
        """A page of ``rows`` rows of ``query`` ended at ``end`` (kept only if it was full:
        after a short page nothing follows)."""
        if query.limit is None or rows < query.limit:
            return
        key = _key(query, query.offset + rows)
        self._ends[key] = end
        self._ends.move_to_end(key)
        while len(self._ends) > MAX_REMEMBERED:
            self._ends.popitem(last=False)
