"""Retention in the ClickHouse store: the project settings and the deletion of calls past
them (:mod:`engine.server._retention` runs the passes).

A call's time is its start's (the newest start part), else its end's (a call known only
by its end), as in the SQLite store. The calls whose time is before the cutoff lose every
part at once (a lightweight ``DELETE``: gone from reads at once, from disk when ClickHouse
next merges the parts).
"""

from __future__ import annotations

from typing import Any

from engine.server.clickhouse._calls import PARTS_TABLE

_READ_SQL = ("SELECT argMax(tuple(retention_days), updated_at_us).1 FROM project_settings "
             "WHERE project_id = {project_id:String}")  # fmt: skip
_RETAINED_SQL = """
SELECT project_id, days FROM (
    SELECT project_id, argMax(tuple(retention_days), updated_at_us).1 AS days
    FROM project_settings GROUP BY project_id
) WHERE days IS NOT NULL ORDER BY project_id"""
# parts with an old time narrow the ids; all of each id's parts decide
_EXPIRED_IDS = f"""
SELECT id FROM {PARTS_TABLE}
WHERE project_id = {{project_id:String}} AND id IN (
    SELECT id FROM {PARTS_TABLE} WHERE project_id = {{project_id:String}}
        AND (started_at_us < {{cutoff:Int64}} OR ended_at_us < {{cutoff:Int64}}))
GROUP BY id
HAVING if(max(has_start) = 1, argMaxIf(started_at_us, version, has_start = 1),
          max(ended_at_us)) < {{cutoff:Int64}}
LIMIT {{limit:UInt64}}"""
# the ids stay in ClickHouse: a statement holding thousands of them would pass its
# max_query_size (256 KiB)
_COUNT_SQL = f"SELECT count() FROM ({_EXPIRED_IDS})"
_DELETE_SQL = (f"DELETE FROM {PARTS_TABLE} "
               f"WHERE project_id = {{project_id:String}} AND id IN ({_EXPIRED_IDS})")


def retention_days(client: Any, project_id: str) -> int | None:
    rows = client.query(_READ_SQL, parameters={"project_id": project_id}).result_rows
    return None if not rows or rows[0][0] is None else int(rows[0][0])


def set_retention_days(client: Any, project_id: str, days: int | None, updated_at_us: int,
                       user_id: str | None) -> None:
    client.insert("project_settings", [[project_id, days, updated_at_us, user_id]],
                  column_names=["project_id", "retention_days", "updated_at_us", "updated_by"])


def retained_projects(client: Any) -> list[tuple[str, int]]:
    return [(p, int(d)) for p, d in client.query(_RETAINED_SQL).result_rows]


def delete_before(client: Any, project_id: str, cutoff_us: int, limit: int) -> int:
    """Up to ``limit`` calls (the count is of those the DELETE then finds: a call that
    ages past the cutoff in between is deleted, and counted at the next pass)."""
    params = {"project_id": project_id, "cutoff": cutoff_us, "limit": limit}
    n = int(client.query(_COUNT_SQL, parameters=params).result_rows[0][0])
    if n:
        client.command(_DELETE_SQL, parameters=params)
    return n
