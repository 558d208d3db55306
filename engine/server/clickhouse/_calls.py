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

from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

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
from engine.server._store import CallsQuery, InvalidQuery
from engine.wire.query import CallsFilter, SortBy

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


def _merged_expr(column: str) -> str:
    """How ``calls_merged`` gives one column of a call (inside ``GROUP BY id``)."""
    if column == "op_name":
        return "argMaxMerge(op_name)"
    if column in _END_PAYLOAD:  # an end from before the last delete is not this call's
        return f"if({_VISIBLE_END}, argMaxMerge({column}).1, NULL)"
    return f"argMaxMerge({column}).1"


# wire field -> merged column; a whitelist, since the name goes into SQL text
_SORT_COLUMNS = {
    "id": "m_id", "op_name": "m_op_name", "display_name": "m_display_name",
    "trace_id": "m_trace_id", "parent_id": "m_parent_id", "thread_id": "m_thread_id",
    "turn_id": "m_turn_id", "started_at": "m_started_at_us", "ended_at": "m_ended_at_us",
    "exception": "m_exception", "wb_user_id": "m_wb_user_id", "wb_run_id": "m_wb_run_id",
    "wb_run_step": "m_wb_run_step", "wb_run_step_end": "m_wb_run_step_end",
}  # fmt: skip
_IN_FILTERS = {
    "trace_ids": "trace_id", "parent_ids": "parent_id", "thread_ids": "thread_id",
    "turn_ids": "turn_id", "wb_user_ids": "wb_user_id", "wb_run_ids": "wb_run_id",
}  # fmt: skip
_UNSUPPORTED_FILTERS = ("input_refs", "output_refs")
# the projection of a read, in SELECT_COLUMNS order; otel_dump is never sent back
_READ_COLUMNS = [c for c in SELECT_COLUMNS[2:] if c != "otel_dump"]
_UINT64_MAX = 2**64 - 1


class CallsSql:
    """The SQL of one call query: which columns to merge, the filters, the order."""

    def __init__(self, project_id: str, flt: CallsFilter | None, sort_by: Sequence[SortBy]):
        self.params: dict[str, Any] = {"project_id": project_id}
        self._inner_where = ["project_id = {project_id:String}"]
        self._where: list[str] = []
        self._needed: set[str] = set()
        if flt is not None:
            self._add_filter(flt)
        self._order = self._order_by(sort_by)

    def _bind(self, value: Any, type_: str) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f"{{{name}:{type_}}}"

    def _add_filter(self, flt: CallsFilter) -> None:
        for name in _UNSUPPORTED_FILTERS:
            if getattr(flt, name):
                raise InvalidQuery(f"filter.{name}", "not supported by engine serve")
        if flt.call_ids is not None:  # on the sorting key: read only those calls' parts
            self._inner_where.append(f"has({self._bind(flt.call_ids, 'Array(String)')}, id)")
        if flt.op_names is not None:
            self._add_op_names(flt.op_names)
        for name, column in _IN_FILTERS.items():
            values = getattr(flt, name)
            if values is not None:
                self._needed.add(column)
                self._where.append(f"has({self._bind(values, 'Array(String)')}, m_{column})")
        if flt.trace_roots_only:
            self._needed.add("parent_id")
            self._where.append("m_parent_id IS NULL")

    def _add_op_names(self, op_names: list[str]) -> None:
        """Exact names, or a ``name:*`` wildcard meaning every version of that op (as weave)."""
        self._needed.add("op_name")
        exact = [n for n in op_names if not n.endswith(":*")]
        terms = [f"startsWith(m_op_name, {self._bind(n[:-1], 'String')})"
                 for n in op_names if n.endswith(":*")]  # fmt: skip
        if exact:
            terms.append(f"has({self._bind(exact, 'Array(String)')}, m_op_name)")
        self._where.append(f"({' OR '.join(terms)})" if terms else "0")

    def _order_by(self, sort_by: Sequence[SortBy]) -> list[str]:
        """As SQLite orders: NULLs first going up, last going down; then arrival order."""
        terms = []
        for i, sort in enumerate(sort_by):
            column = _SORT_COLUMNS.get(sort.field)
            if column is None:
                raise InvalidQuery(
                    f"sort_by[{i}].field",
                    f"cannot sort by {sort.field!r}; sortable: {', '.join(sorted(_SORT_COLUMNS))}",
                )
            self._needed.add(column[2:])
            nulls = "NULLS FIRST" if sort.direction.lower() == "asc" else "NULLS LAST"
            terms.append(f"{column} {sort.direction.upper()} {nulls}")
        if not terms:
            self._needed.add("started_at_us")
            terms.append("m_started_at_us ASC NULLS FIRST")
        return [*terms, "m_seq ASC", "m_id ASC"]  # a total order: pages never overlap

    def _inner(self, columns: Iterable[str]) -> str:
        merged = "".join(f", {_merged_expr(c)} AS m_{c}" for c in sorted(set(columns)) if c != "id")
        return (
            f"SELECT id AS m_id, min(first_version) AS m_seq{merged} FROM calls_merged "
            f"WHERE {' AND '.join(self._inner_where)} GROUP BY id "
            "HAVING max(start_version) > max(deleted_version)"
        )

    def _outer_where(self) -> str:
        return f" WHERE {' AND '.join(self._where)}" if self._where else ""

    def select(self, limit: int | None, offset: int) -> str:
        """Rows in ``SELECT_COLUMNS`` order (``project_id`` bound, ``otel_dump`` NULL)."""
        projection = ", ".join(
            "NULL" if c == "otel_dump" else f"m_{c}" for c in SELECT_COLUMNS[2:]
        )
        page = ""
        if limit is not None or offset:
            page = f" LIMIT {self._bind(_UINT64_MAX if limit is None else limit, 'UInt64')}" \
                   f" OFFSET {self._bind(offset, 'UInt64')}"  # fmt: skip
        return (
            f"SELECT {{project_id:String}}, m_id, {projection} "
            f"FROM ({self._inner(self._needed | set(_READ_COLUMNS))}){self._outer_where()} "
            f"ORDER BY {', '.join(self._order)}{page}"
        )

    def count(self) -> str:
        return f"SELECT count() FROM ({self._inner(self._needed)}){self._outer_where()}"


def calls_sql(query: CallsQuery) -> CallsSql:
    return CallsSql(query.project_id, query.filter, query.sort_by)


def subtree_sql(project_id: str, parent_ids: list[str]) -> tuple[str, dict[str, Any]]:
    """Visible calls whose parent is among ``parent_ids`` (one level of a subtree)."""
    sql = CallsSql(project_id, CallsFilter(parent_ids=parent_ids), ())
    return f"SELECT m_id FROM ({sql._inner(sql._needed)}){sql._outer_where()}", sql.params


def visible_sql(project_id: str, call_ids: list[str]) -> tuple[str, dict[str, Any]]:
    sql = CallsSql(project_id, CallsFilter(call_ids=call_ids), ())
    return f"SELECT m_id FROM ({sql._inner(())})", sql.params


def thread_turns_sql(project_id: str, thread_ids: list[str] | None,
                     max_turns: int) -> tuple[str, dict[str, Any]]:  # fmt: skip
    sql = CallsSql(project_id, CallsFilter(thread_ids=thread_ids), ())
    where = ["m_thread_id IS NOT NULL", "m_id = m_turn_id", *sql._where]
    inner = sql._inner({"thread_id", "turn_id", "started_at_us", "ended_at_us"})
    text = (
        f"SELECT m_thread_id, m_id, m_started_at_us, m_ended_at_us FROM ({inner}) "
        f"WHERE {' AND '.join(where)} "
        f"ORDER BY m_thread_id, m_started_at_us ASC NULLS FIRST, m_seq, m_id "
        f"LIMIT {sql._bind(max_turns, 'UInt64')}"
    )
    return text, sql.params


STORAGE_SQL = (
    "SELECT sum(length(ifNull(m_inputs, '')) + length(ifNull(m_output, '')) "
    "+ length(ifNull(m_attributes, '')) + length(ifNull(m_summary, ''))) FROM ({inner})"
)


def storage_sql(project_id: str) -> tuple[str, dict[str, Any]]:
    sql = CallsSql(project_id, None, ())
    return STORAGE_SQL.format(inner=sql._inner({"inputs", "output", "attributes", "summary"})), sql.params
