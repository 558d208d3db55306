"""SQL of call queries: the WHERE and ORDER BY of a :class:`~engine.server._store.CallsQuery`.

Column names are those of the ``calls`` table (``_sqlite_db``); parameters are bound with
``?``. Anything the client names that goes into SQL text (a sort field) is looked up in a
whitelist, never pasted.
"""

from __future__ import annotations

from typing import Any

import msgspec

from engine.server._rows import SELECT_COLUMNS
from engine.server._store import InvalidQuery
from engine.wire.query import CallsFilter, SortBy

# Sortable fields: wire name -> column. A whitelist, because the column is put into SQL text.
_SORT_COLUMNS = {
    "id": "id", "op_name": "op_name", "display_name": "display_name", "trace_id": "trace_id",
    "parent_id": "parent_id", "thread_id": "thread_id", "turn_id": "turn_id",
    "started_at": "started_at_us", "ended_at": "ended_at_us", "exception": "exception",
    "wb_user_id": "wb_user_id", "wb_run_id": "wb_run_id", "wb_run_step": "wb_run_step",
    "wb_run_step_end": "wb_run_step_end",
}  # fmt: skip
_IN_FILTERS = {
    "call_ids": "id", "trace_ids": "trace_id", "parent_ids": "parent_id",
    "thread_ids": "thread_id", "turn_ids": "turn_id", "wb_user_ids": "wb_user_id",
    "wb_run_ids": "wb_run_id",
}  # fmt: skip
_UNSUPPORTED_FILTERS = ("input_refs", "output_refs")
# A list filter is one bound JSON array, so SQLite's cap on bound parameters never comes
# into play; a list longer than this is a 422 naming the field.
MAX_FILTER_VALUES = 10_000
MAX_SORT_FIELDS = 16
_JSON_LIST = "(SELECT value FROM json_each(?))"
_json = msgspec.json.Encoder()


class Selection:
    """The WHERE and ORDER BY of a call query, built from a filter and sort list."""

    def __init__(
        self,
        project_id: str,
        flt: CallsFilter | None = None,
        sort_by: tuple[SortBy, ...] | list[SortBy] = (),
    ) -> None:
        self._where = ["project_id = ?", "op_name IS NOT NULL"]
        self._params: list[Any] = [project_id]
        if flt is not None:
            self._add_filter(flt)
        self._order = self._order_by(sort_by)

    def _add_filter(self, flt: CallsFilter) -> None:
        for name in _UNSUPPORTED_FILTERS:
            if getattr(flt, name):
                raise InvalidQuery(f"filter.{name}", "not supported by engine serve")
        for name in ("op_names", *_IN_FILTERS):
            values = getattr(flt, name)
            if values is not None and len(values) > MAX_FILTER_VALUES:
                raise InvalidQuery(
                    f"filter.{name}", f"at most {MAX_FILTER_VALUES} values, got {len(values)}"
                )
        if flt.op_names is not None:
            self._add_op_names(flt.op_names)
        for name, column in _IN_FILTERS.items():
            values = getattr(flt, name)
            if values is not None:
                self._where.append(f"{column} IN {_JSON_LIST}")
                self._params.append(_json.encode(values).decode())
        if flt.trace_roots_only:
            self._where.append("parent_id IS NULL")

    def _add_op_names(self, op_names: list[str]) -> None:
        """Exact names, or a ``name:*`` wildcard meaning every version of that op (as weave)."""
        exact = [name for name in op_names if not name.endswith(":*")]
        prefixes = [name[:-1] for name in op_names if name.endswith(":*")]
        terms = [f"op_name IN {_JSON_LIST}"] if exact else []
        if prefixes:
            terms.append("EXISTS (SELECT 1 FROM json_each(?) AS p "
                         "WHERE substr(op_name, 1, length(p.value)) = p.value)")  # fmt: skip
        self._params.extend(_json.encode(names).decode() for names in (exact, prefixes) if names)
        self._where.append(f"({' OR '.join(terms)})" if terms else "0")

    @staticmethod
    def _order_by(sort_by: tuple[SortBy, ...] | list[SortBy]) -> str:
        if len(sort_by) > MAX_SORT_FIELDS:
            raise InvalidQuery("sort_by", f"at most {MAX_SORT_FIELDS} fields, got {len(sort_by)}")
        terms = []
        for i, sort in enumerate(sort_by):
            column = _SORT_COLUMNS.get(sort.field)
            if column is None:
                raise InvalidQuery(
                    f"sort_by[{i}].field",
                    f"cannot sort by {sort.field!r}; sortable: {', '.join(sorted(_SORT_COLUMNS))}",
                )
            terms.append(f"{column} {sort.direction.upper()}")
        if not terms:
            terms.append("started_at_us ASC")
        # ties go by arrival (a total order: limit/offset pages never overlap), in the
        # direction of the last key, so an index on that key also serves the tie-break
        terms.append("seq " + terms[-1].rsplit(" ", 1)[1])
        return ", ".join(terms)

    def select_sql(self, limit: int | None, offset: int) -> tuple[str, list[Any]]:
        sql = (
            f"SELECT {', '.join(SELECT_COLUMNS)} FROM calls WHERE {' AND '.join(self._where)} "
            f"ORDER BY {self._order} LIMIT ? OFFSET ?"
        )
        return sql, [*self._params, -1 if limit is None else limit, offset]

    def count_sql(self) -> tuple[str, list[Any]]:
        return f"SELECT count(*) FROM calls WHERE {' AND '.join(self._where)}", list(self._params)
