"""The call statements of the ClickHouse store: parts as JSON lines in, merged calls out.

Writes: every start, end, complete call, rename and delete becomes one row of
``call_parts`` (migration 0001), encoded as ``JSONCompactEachRow`` by msgspec in one C
call per batch; ClickHouse parses it and folds it into ``calls_merged``.

Reads: one ``GROUP BY id`` over ``calls_merged`` merges each call's states (the inner
query, its columns named ``m_*``), only the columns the query needs; the outer query
filters, sorts and pages. Values are bound as query parameters (``{name:Type}``); column
names come from whitelists, never from the request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from engine.server._calls_sql import Selection
from engine.server._rows import (
    END_COLUMNS,
    SELECT_COLUMNS,
    START_COLUMNS,
    Complete,
    End,
    Start,
    complete_row,
    end_row,
    start_row,
)
from engine.server._store import CallsQuery
from engine.server.clickhouse._dialect import CLICKHOUSE, bind
from engine.wire.query import CallsFilter

_END_PAYLOAD = END_COLUMNS[2:]  # an end's trace_id / started_at are hints a start overrides
PART_COLUMNS = ("project_id", "id", "version", "has_start", "has_end", "has_name", "is_delete",
                *START_COLUMNS, *_END_PAYLOAD)  # fmt: skip
_NO_START = (None,) * len(START_COLUMNS)
_NO_END = (None,) * len(_END_PAYLOAD)
_NO_NAME_FIELDS = (None,) * (len(START_COLUMNS) - 2)
_lines = msgspec.json.Encoder()

# -- writing ------------------------------------------------------------------------------


def call_parts(starts: Sequence[Start], ends: Sequence[End], completes: Sequence[Complete],
               first_version: int) -> tuple[bytes, int]:  # fmt: skip
    """The rows of one batch as JSON lines, versions from ``first_version`` on; returns
    (body, rows)."""
    rows: list[tuple] = []
    version = first_version
    for s in starts:
        rows.append((s.project_id, s.id, version, 1, 0, 0, 0, *start_row(s)[2:], *_NO_END))
        version += 1
    for e in ends:
        rows.append((e.project_id, e.id, version, 0, 1, 0, 0, *_NO_START, *end_row(e)[4:]))
        version += 1
    for c in completes:
        rows.append((c.project_id, c.id, version, 1, 1, 0, 0, *complete_row(c)[2:]))
        version += 1
    return _lines.encode_lines(rows), len(rows)


def rename_part(project_id: str, call_id: str, name: str | None, version: int) -> bytes:
    # display_name is START_COLUMNS[1]: op_name stays NULL, the rest too
    row = (project_id, call_id, version, 0, 0, 1, 0, None, name, *_NO_NAME_FIELDS, *_NO_END)
    return _lines.encode_lines([row])


def delete_parts(project_id: str, call_ids: Iterable[str], first_version: int) -> bytes:
    rows = [(project_id, call_id, first_version + i, 0, 0, 0, 1, *_NO_START, *_NO_END)
            for i, call_id in enumerate(call_ids)]  # fmt: skip
    return _lines.encode_lines(rows)


# -- reading ------------------------------------------------------------------------------

_VISIBLE_END = "max(end_version) > max(deleted_version)"
# the projection of a read, in SELECT_COLUMNS order; otel_dump is never sent back
_READ_COLUMNS = tuple(c for c in SELECT_COLUMNS[2:] if c != "otel_dump")
_MERGED = frozenset(SELECT_COLUMNS[2:])
_COLUMN_NAMES = re.compile(r"\b(" + "|".join(sorted(_MERGED, key=len, reverse=True)) + r")\b")
_UINT64_MAX = 2**64 - 1


def _merged_expr(column: str) -> str:
    """How ``calls_merged`` gives one column of a call (inside ``GROUP BY id``)."""
    if column == "op_name":
        return "argMaxMerge(op_name)"
    if column in _END_PAYLOAD:  # an end from before the last delete is not this call's
        return f"if({_VISIBLE_END}, argMaxMerge({column}).1, NULL)"
    return f"argMaxMerge({column}).1"


def merged_calls(columns: Iterable[str], where: Sequence[str] = ()) -> str:
    """The visible calls of ``{project_id:String}`` as a relation with the columns of
    SQLite's ``calls`` (``id``, ``project_id``, ``seq``: arrival order, and ``columns``);
    only those columns are merged. ``where``: conditions on the stored parts (``id``)."""
    names = sorted(set(columns) - {"id", "project_id"})
    merged = "".join(f", {_merged_expr(c)} AS m_{c}" for c in names)
    conditions = " AND ".join(["project_id = {project_id:String}", *where])
    renamed = "".join(f", m_{c} AS {c}" for c in names)
    return (
        f"SELECT m_id AS id, {{project_id:String}} AS project_id, m_seq AS seq{renamed} FROM ("
        f"SELECT id AS m_id, min(first_version) AS m_seq{merged} FROM calls_merged "
        f"WHERE {conditions} GROUP BY id HAVING max(start_version) > max(deleted_version))"
    )


class CallsSql:
    """One call query in ClickHouse: the shared builder's WHERE and ORDER BY over
    :func:`merged_calls`, with only the columns they and the answer need merged."""

    def __init__(self, query: CallsQuery) -> None:
        selection = Selection(query, CLICKHOUSE)  # InvalidQuery before anything runs
        self.params: dict[str, Any] = {"project_id": query.project_id}
        self._where = bind(selection.where, self.params)
        self._order = bind(selection.order, self.params)
        self._used = set(_COLUMN_NAMES.findall(f"{self._where} {self._order}"))
        self._parts_where = []
        flt = query.filter
        if flt is not None and flt.call_ids is not None:  # on the sorting key: only their parts
            self.params["call_ids"] = list(flt.call_ids)
            self._parts_where.append("has({call_ids:Array(String)}, id)")

    def _from(self, columns: Iterable[str]) -> str:
        return f"({merged_calls({*self._used, *columns}, self._parts_where)}) AS calls"

    def select(self, limit: int | None, offset: int) -> str:
        """Rows in ``SELECT_COLUMNS`` order (``otel_dump`` NULL: never sent back)."""
        projection = ", ".join("NULL" if c == "otel_dump" else c for c in SELECT_COLUMNS)
        page = ""
        if limit is not None or offset:
            self.params["limit"] = _UINT64_MAX if limit is None else limit
            self.params["offset"] = offset
            page = " LIMIT {limit:UInt64} OFFSET {offset:UInt64}"
        return (f"SELECT {projection} FROM {self._from(_READ_COLUMNS)} WHERE {self._where} "
                f"ORDER BY {self._order}{page}")  # fmt: skip

    def count(self) -> str:
        return f"SELECT count() FROM {self._from(())} WHERE {self._where}"


def _ids_sql(project_id: str, flt: CallsFilter) -> tuple[str, dict[str, Any]]:
    sql = CallsSql(CallsQuery(project_id=project_id, filter=flt))
    return f"SELECT id FROM {sql._from(())} WHERE {sql._where}", sql.params


def subtree_sql(project_id: str, parent_ids: list[str]) -> tuple[str, dict[str, Any]]:
    """Visible calls whose parent is among ``parent_ids`` (one level of a subtree)."""
    return _ids_sql(project_id, CallsFilter(parent_ids=parent_ids))


def visible_sql(project_id: str, call_ids: list[str]) -> tuple[str, dict[str, Any]]:
    return _ids_sql(project_id, CallsFilter(call_ids=call_ids))


def thread_turns_sql(project_id: str, thread_ids: list[str] | None,
                     max_turns: int) -> tuple[str, dict[str, Any]]:  # fmt: skip
    params: dict[str, Any] = {"project_id": project_id, "max_turns": max_turns}
    where = ["thread_id IS NOT NULL", "id = turn_id"]
    if thread_ids is not None:
        params["thread_ids"] = thread_ids
        where.append("has({thread_ids:Array(String)}, thread_id)")
    calls = merged_calls({"thread_id", "turn_id", "started_at_us", "ended_at_us"})
    text = (
        f"SELECT thread_id, id, started_at_us, ended_at_us FROM ({calls}) "
        f"WHERE {' AND '.join(where)} "
        "ORDER BY thread_id, started_at_us ASC NULLS FIRST, seq, id LIMIT {max_turns:UInt64}"
    )
    return text, params


def storage_sql(project_id: str) -> tuple[str, dict[str, Any]]:
    calls = merged_calls({"inputs", "output", "attributes", "summary"})
    text = ("SELECT sum(length(ifNull(inputs, '')) + length(ifNull(output, '')) "
            f"+ length(ifNull(attributes, '')) + length(ifNull(summary, ''))) FROM ({calls})")  # fmt: skip
    return text, {"project_id": project_id}
