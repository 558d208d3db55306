"""Offset pages of calls read from where the previous page ended, when the project's calls
did not change (the ClickHouse store's counterpart of ``engine/server/_sqlite_pages.py``).

weave's client reads ``client.get_calls()`` as pages of 1,000 with growing offsets; here
every page merged the whole project and then skipped the offset. The store remembers
where each full page ordered by start time ended (the last call's start time and arrival
``seq``, and the project's part count and newest version: parts are added, and deleted
only by retention, so those two change with any write to the project) under the query
and the next offset. That next page is read among the calls whose start parts come next
(``CallsSql.after``), when the project is unchanged before they are looked up and once the
page's first calls are read, and they fill the page; otherwise the offset answers.
"""

from __future__ import annotations

from typing import Any

from engine.server._page_ends import End, PageEnds
from engine.server._rows import to_us
from engine.server._store import CallRow, CallsQuery
from engine.server.clickhouse import _calls

_STATE_SQL = (f"SELECT count(), max(version) FROM {_calls.PARTS_TABLE} "
              "WHERE project_id = {project_id:String}")  # fmt: skip
_SEQ_SQL = (f"SELECT min(version) FROM {_calls.PARTS_TABLE} "
            "WHERE project_id = {project_id:String} AND id = {id:String}")  # fmt: skip


def project_state(client: Any, project_id: str) -> tuple[int, int]:
    """(parts, newest version) of a project: any write to it changes them."""
    ((parts, newest),) = client.query(_STATE_SQL, parameters={"project_id": project_id}).result_rows
    return int(parts), int(newest)


def remember(client: Any, page_ends: PageEnds, query: CallsQuery, count: int,
             last: CallRow | None, state: tuple[int, int]) -> None:  # fmt: skip
    """A full page (``count`` calls, read with the project at ``state``) ended at ``last``."""
    if query.limit is None or count < query.limit or last is None:
        return
    ((seq,),) = client.query(_SEQ_SQL, parameters={
        "project_id": query.project_id, "id": last["id"]}).result_rows  # fmt: skip
    page_ends.put(query, count, (to_us(last["started_at"]), int(seq), state))


def read_on(client: Any, query: CallsQuery, end: End) -> tuple[_calls.CallsSql, bool] | None:
    """The query of the page after a remembered ``end`` (narrowed to the calls past it)
    and whether it is right only if the page comes back full; None if the offset must
    answer (the project changed). The store checks the project again once the page's
    first calls are read."""
    started_at_us, seq, state = end
    if project_state(client, query.project_id) != state:
        return None
    sql = _calls.CallsSql(query)
    if sql.direction is None:
        return None
    rows = client.query(sql.after(started_at_us, seq), parameters=sql.params).result_rows
    narrowed = sql.narrow_to_starts(rows, _calls.CANDIDATES_MAX)
    return None if narrowed == "none" else (sql, narrowed == "check")
