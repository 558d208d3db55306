"""SQL of call queries: WHERE and ORDER BY of a :class:`~engine.server._store.CallsQuery`.

The semantics are weave's (``sqlite_trace_server.py`` / the ClickHouse query builder):

- fields: the call's columns, JSON paths into ``inputs`` / ``output`` / ``attributes`` /
  ``summary`` (``inputs.a.b``, ``\\.`` for a dot inside a key, digits index lists), and
  the derived ``summary.weave.status`` / ``latency_ms`` / ``trace_name``;
- a JSON field compared with a literal is cast the literal's way (a number casts the
  field to a number, a boolean to a boolean, anything else compares its text);
- ``started_at`` / ``ended_at`` compare with an ISO-8601 string or with seconds since
  the epoch (a number);
- default order: start time; an explicit sort ends with id as weave's does, except when
  an index serves every key (ties by arrival there, so no sort step is needed).

Everything an engine spells its own way goes through a ``Dialect`` (``_calls_dialect``:
SQLite's by default), so another SQL store overrides the spellings, not the semantics.
Values are always bound parameters; field names reach SQL text only as whitelisted column
names.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from typing import Any

import msgspec

from engine.server._calls_dialect import SQLITE, Dialect
from engine.server._calls_feedback import MULTI_VALUE_TYPES, feedback_field
from engine.server._rows import sqlite_projection, to_us
from engine.server._sql_text import Sql, balanced, join, wrap
from engine.server._store import CallsQuery, InvalidQuery
from engine.wire.query import CallsFilter, SortBy

_PLAIN_COLUMNS = frozenset({
    "id", "project_id", "op_name", "display_name", "trace_id", "parent_id", "thread_id",
    "turn_id", "exception", "wb_user_id", "wb_run_id", "wb_run_step", "wb_run_step_end",
})  # fmt: skip
JSON_COLUMNS = ("inputs", "output", "attributes", "summary")
_LATENCY = Sql(
    "(CASE WHEN ended_at_us IS NOT NULL THEN (ended_at_us - started_at_us) / 1000.0 ELSE 0 END)"
)
_IN_FILTERS = {
    "call_ids": "id", "trace_ids": "trace_id", "parent_ids": "parent_id",
    "thread_ids": "thread_id", "turn_ids": "turn_id", "wb_user_ids": "wb_user_id",
    "wb_run_ids": "wb_run_id",
}  # fmt: skip
# weave: an empty list is no filter, except these ([] matches nothing in its SQLite server)
_EMPTY_MATCHES_NONE = frozenset({"thread_ids", "turn_ids"})
_WILDCARD = ":*"
# sort fields an index on (project_id, field) serves (``_sqlite_db``), rows then by arrival
_INDEX_ORDERED = frozenset({"started_at", "ended_at", "op_name", "parent_id", "trace_id", "id"})
# A list filter is one bound JSON array, so SQLite's cap on bound parameters never comes
# into play; a list longer than this is a 422 naming the field.
MAX_FILTER_VALUES = 10_000
MAX_SORT_FIELDS = 16


def split_path(path: str) -> list[str]:
    """``a.b\\.c.0`` → ``["a", "b.c", "0"]`` (a backslash escapes a dot)."""
    parts, current, escaped = [], [], False
    for char in path:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _json_list(values: Sequence[str]) -> str:
    return msgspec.json.encode(list(values)).decode()


def _bindable(value: int) -> int | float:
    """An integer beyond int64 as a float: no store binds it (SQLite: OverflowError, a
    500), and weave's SQLite server, which writes literals into its SQL, has SQLite read
    it as a REAL; a float compares with numbers as the integer would, to 53 bits."""
    return value if -(2**63) <= value < 2**63 else float(value)


def _literal_cast(value: Any) -> str | None:
    """The cast a literal imposes on a JSON field compared with it (weave's rule)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "double"
    return None


def _param(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return msgspec.json.encode(value).decode()
    if isinstance(value, int) and not isinstance(value, bool):
        return _bindable(value)
    return value


_STATUS, _ERRORS = {"$getField": "summary.weave.status"}, {"$literal": "error"}


def _time_us(value: Any, where: str) -> int | float:
    """A literal compared with a time column: ISO-8601 text, or seconds since the epoch."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _bindable(round(value * 1_000_000))
    if isinstance(value, str):
        try:
            return to_us(_dt.datetime.fromisoformat(value.replace("Z", "+00:00")))  # type: ignore[return-value]
        except ValueError:
            pass
    raise InvalidQuery(where, f"a time is compared with ISO-8601 text or epoch seconds, got {value!r}")


class _ExprSql:
    """An ``$expr`` tree (already validated by ``_query_expr``) as a SQL condition."""

    def __init__(self, dialect: Dialect) -> None:
        self.d = dialect
        self.feedback_types: list[str] = []  # of the feedback fields used, in first use order
        self._each: tuple[str, Sql] | None = None  # a field and the feedback document it reads

    def field(self, name: str, cast: str | None, where: str) -> Sql:
        if name in _PLAIN_COLUMNS:
            return Sql(name)
        if name in self.d.time_columns:
            return Sql(self.d.time_columns[name])
        if name == "summary.weave.status":
            return wrap(
                "(CASE WHEN exception IS NOT NULL THEN 'error' WHEN ended_at_us IS NULL THEN "
                "'running' WHEN {} > 0 THEN 'descendant_error' ELSE 'success' END)",
                self.d.error_count(),
            )
        if name == "summary.weave.latency_ms":
            return _LATENCY
        if name == "summary.weave.trace_name":
            return self.trace_name()
        if name.startswith("feedback."):
            doc, parts = self.feedback(name, where)
            return self.d.json_text(doc, parts) if cast is None else self.json_field(doc, parts, cast)
        head, _, rest = name.partition(".")
        if head not in JSON_COLUMNS:
            raise InvalidQuery(where, f"unknown call field {name!r}")
        return self.json_field(Sql(head), split_path(rest) if rest else [], cast)

    def feedback(self, name: str, where: str) -> tuple[Sql, list[str]]:
        """The feedback document a feedback field reads and the path in it."""
        fb = feedback_field(name, where)
        if self._each is not None and self._each[0] == name:
            return self._each[1], split_path(fb.path)
        return self.d.feedback_doc(self._index(fb.feedback_type), fb.feedback_type), split_path(fb.path)

    def _index(self, feedback_type: str) -> int:
        if feedback_type not in self.feedback_types:
            self.feedback_types.append(feedback_type)
        return self.feedback_types.index(feedback_type)

    def _each_feedback(self, op: dict[str, Any], where: str) -> Sql | None:
        """``$eq`` / ``$contains`` of a reaction or note field: over each of the call's
        feedback of the type (see ``_calls_feedback``); None for any other condition."""
        ((name, arg),) = op.items()
        operand = arg[0] if name == "$eq" else arg["input"]
        field = operand.get("$getField") if self._each is None else None
        kind = feedback_field(field, where).feedback_type if str(field).startswith("feedback.") else None
        if kind not in MULTI_VALUE_TYPES:
            return None
        none = name == "$eq" and arg[1] == {"$literal": None}

        def test(doc: Sql) -> Sql:
            self._each = (field, doc)
            try:
                if none:
                    return wrap("({} IS NOT NULL)", self.operand(operand, None, where))
                return self.condition(op, where)
            finally:
                self._each = None

        found = self.d.any_feedback(self._index(kind), kind, test)
        return wrap("(NOT {})", found) if none else found

    def trace_name(self) -> Sql:
        return Sql(
            "(CASE WHEN display_name IS NOT NULL AND display_name != '' THEN display_name "
            f"WHEN op_name LIKE 'weave:///%' THEN {self.d.ref_name('op_name')} ELSE op_name END)"
        )

    def json_field(self, column: Sql, parts: list[str], cast: str | None) -> Sql:
        value = self.d.json_value(column, parts)
        if cast is None:
            return self.d.cast(value, "string")
        kind = self.d.json_type(column, parts)
        text = self.d.cast(value, "string")
        number = self.d.cast(value, "double" if cast == "double" else "int")
        plain = self.d.plain_number(text, allow_dot=cast == "double")
        if cast == "bool":
            return wrap("(CASE WHEN {} = 'true' THEN 1 WHEN {} = 'false' THEN 0 "
                         "WHEN {} = 'integer' THEN {} WHEN lower({}) = 'true' THEN 1 "
                         "WHEN lower({}) = 'false' THEN 0 WHEN {} THEN {} ELSE NULL END)",
                         kind, kind, kind, number, text, text, plain, number)  # fmt: skip
        native = "('integer', 'real')" if cast == "double" else "('integer')"
        return wrap(f"(CASE WHEN {{}} IN {native} THEN {{}} "
                     "WHEN {} = 'text' AND {} THEN {} ELSE NULL END)",
                     kind, number, kind, plain, number)  # fmt: skip

    def operand(self, op: dict[str, Any], cast: str | None, where: str) -> Sql:
        ((name, arg),) = op.items()
        if name == "$literal":
            if arg is None:
                return Sql("NULL")
            return Sql("?", (_param(arg),))
        if name == "$getField":
            return self.field(arg, cast, where)
        if name == "$convert":
            inner = self.operand(arg["input"], None, where + ".$convert")
            if arg["to"] == "exists":
                return wrap("({} IS NOT NULL)", inner)
            return self.d.cast(inner, arg["to"])
        return self.condition(op, where)

    def _is_time(self, op: dict[str, Any]) -> bool:
        return op.get("$getField") in self.d.time_columns

    def _side(self, this: dict[str, Any], other: dict[str, Any], where: str) -> Sql:
        """One side of a comparison: a literal facing a time column becomes microseconds,
        a JSON field facing a literal is cast the literal's way."""
        if "$literal" in this and self._is_time(other):
            return Sql("?", (_time_us(this["$literal"], where),))
        cast = _literal_cast(other["$literal"]) if "$literal" in other else None
        return self.operand(this, cast, where)

    def condition(self, op: dict[str, Any], where: str) -> Sql:
        ((name, arg),) = op.items()
        here = f"{where}.{name}"
        if name in ("$and", "$or"):
            parts = [self.condition_of(sub, f"{here}[{i}]") for i, sub in enumerate(arg)]
            if not parts:
                raise InvalidQuery(here, "needs at least one operand")
            return balanced(parts, " AND " if name == "$and" else " OR ")
        if name == "$not":
            return wrap("(NOT {})", self.condition_of(arg[0], here))
        each = self._each_feedback(op, where) if name in ("$eq", "$contains") else None
        if each is not None:
            return each
        if name == "$eq" and arg[1] == {"$literal": None}:
            return wrap("({} IS NULL)", self.operand(arg[0], None, here))
        if name == "$eq" and _ERRORS in (arg[0], arg[1]) and _STATUS in (arg[0], arg[1]):
            # the status filter of trace views: what the status is made of, so the partial
            # index of exceptions answers it instead of a scan (the same rows, see field())
            return Sql("(exception IS NOT NULL)")
        compare = {"$eq": "=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
        if name in compare:
            left, right = self._side(arg[0], arg[1], here), self._side(arg[1], arg[0], here)
            return wrap(f"({{}} {compare[name]} {{}})", left, right)
        if name == "$in":
            return self._in(arg, here)
        if name == "$contains":
            hay = self.operand(arg["input"], None, here)
            needle = self.operand(arg["substr"], None, here)
            return self.d.contains(hay, needle, bool(arg.get("case_insensitive")))
        raise InvalidQuery(here, "not a condition")

    def condition_of(self, op: dict[str, Any], where: str) -> Sql:
        """An operand used as a condition: a bare field or literal is tested for truth."""
        return self.operand(op, None, where) if set(op) & {"$getField", "$literal", "$convert"} \
            else self.condition(op, where)

    def _in(self, arg: list[Any], where: str) -> Sql:
        values = arg[1]
        if not values:
            return Sql("0")
        if self._is_time(arg[0]):
            items = [Sql("?", (_time_us(v.get("$literal"), where),)) for v in values]
            return wrap("({} IN ({}))", self.field(arg[0]["$getField"], None, where),
                         join(items, ", "))  # fmt: skip
        casts = {_literal_cast(v["$literal"]) if "$literal" in v else None for v in values}
        cast = casts.pop() if len(casts) == 1 else ("double" if casts == {"int", "double"} else None)
        left = self.operand(arg[0], cast, where)
        items = [self.operand(v, None, where) for v in values]
        return wrap("({} IN ({}))", left, join(items, ", "))


# An op filter matching at most this many calls is read through the op index and sorted;
# one matching more streams in the query's order instead (see Selection)
FEW_OP_ROWS = 5_000


class Selection:
    """The WHERE and ORDER BY of a call query for one dialect.

    ``op_rows`` (SQLite): how many calls the op filter alone matches, counted up to
    ``FEW_OP_ROWS + 1`` (:meth:`op_rows_sql`). SQLite's planner cannot tell a rare op from
    a frequent one: it streamed a page of a rare op (weave's ``Evaluation.evaluate`` among
    a million calls) in start order through every call, and read a frequent op's
    ``name:*`` through the op index, sorting all of its calls for a page of 50 (2 → 67–94
    ms at 200k calls). A few matches: the op condition says it is selective
    (``likelihood``), so the op index is read and its matches sorted; many: the column is
    hidden from the op index (``+op_name``), so the page streams in order and stops.
    """

    def __init__(self, query: CallsQuery, dialect: Dialect = SQLITE,
                 op_rows: int | None = None) -> None:
        self.d = dialect
        self._op_rows = op_rows
        self.op_filter: Sql | None = None  # the op condition alone, as the planner sees it
        self._expr = _ExprSql(dialect)
        where = [Sql("project_id = ?", (query.project_id,)), Sql(dialect.started)]
        if query.filter is not None:
            where += self._filter(query.filter)
        if query.query is not None:
            where.append(self._expr.condition(query.query["$expr"], "query.$expr"))
        self.where = join(where, " AND ")
        self.order = self._order_by(query.sort_by)
        self._json_columns = query.json_columns

    def _filter(self, flt: CallsFilter) -> list[Sql]:
        for name in ("op_names", "input_refs", "output_refs", *_IN_FILTERS):
            values = getattr(flt, name)
            if values is not None and len(values) > MAX_FILTER_VALUES:
                raise InvalidQuery(
                    f"filter.{name}", f"at most {MAX_FILTER_VALUES} values, got {len(values)}"
                )
        where = []
        if flt.op_names:
            self.op_filter = self._op_names(flt.op_names, "op_name")
            if self._op_rows is None:
                where.append(self.op_filter)
            elif self._op_rows <= FEW_OP_ROWS:
                where.append(wrap("likelihood({}, 0.0001)", self.op_filter))
            else:
                where.append(self._op_names(flt.op_names, "+op_name"))
        for name, column in _IN_FILTERS.items():
            values = getattr(flt, name)
            if values or (values is not None and name in _EMPTY_MATCHES_NONE):
                where.append(Sql(self.d.in_list(column), (_json_list(values),)))
        for name, column in (("input_refs", "inputs"), ("output_refs", "output")):
            refs = getattr(flt, name)
            if refs:
                where.append(self._refs(column, refs))
        if flt.trace_roots_only:
            where.append(Sql("parent_id IS NULL"))
        return where

    def _op_names(self, op_names: list[str], column: str) -> Sql:
        """Exact names, or a ``name:*`` wildcard meaning every version of that op (as weave)."""
        exact = [name for name in op_names if not name.endswith(_WILDCARD)]
        prefixes = [name[:-1] for name in op_names if name.endswith(_WILDCARD)]
        terms = [Sql(self.d.in_list(column), (_json_list(exact),))] if exact else []
        if prefixes:
            terms.append(self.d.starts_with_any(column, prefixes))
        return wrap("({})", join(terms, " OR ")) if terms else Sql("0")

    def op_rows_sql(self, project_id: str) -> Sql:
        """How many calls the op filter alone matches, up to ``FEW_OP_ROWS + 1``."""
        assert self.op_filter is not None
        return Sql(f"SELECT count(*) FROM (SELECT 1 FROM calls WHERE project_id = ? AND "
                   f"{self.d.started} AND {self.op_filter.text} LIMIT ?)",
                   (project_id, *self.op_filter.params, FEW_OP_ROWS + 1))

    def _refs(self, column: str, refs: list[str]) -> Sql:
        """Calls whose ``column`` holds one of ``refs`` anywhere (``…:*``: any version).
        The refs are bound as one JSON list per kind, so any number of them is one term
        (a term per ref: 1,000 refs passed SQLite's expression depth, a 500)."""
        exact = [ref for ref in refs if not ref.endswith(_WILDCARD)]
        prefixes = [ref[: -len(_WILDCARD)] + ":" for ref in refs if ref.endswith(_WILDCARD)]
        terms = []
        if exact:
            terms.append(Sql(self.d.has_string(column, self.d.in_list("t.value")),
                             (_json_list(exact),)))
        if prefixes:
            terms.append(Sql(self.d.has_string(column, self.d.has_prefix("t.value")),
                             (_json_list(prefixes),)))
        return wrap("({})", join(terms, " OR "))

    def sort_key(self, field: str, where: str) -> Sql:
        if field in self.d.time_columns:
            return Sql(self.d.time_columns[field])
        if field in _PLAIN_COLUMNS:
            return Sql(field)
        if field.startswith("summary.weave."):
            return self._expr.field(field, None, where)
        if field.startswith("feedback."):
            return self.d.feedback_sort_key(*self._expr.feedback(field, where))
        head, _, rest = field.partition(".")
        if head not in JSON_COLUMNS:
            raise InvalidQuery(where, f"cannot sort by {field!r}: not a call field")
        return self.d.json_sort_key(Sql(head), split_path(rest) if rest else [])

    @property
    def feedback_types(self) -> list[str]:
        """The feedback types the query's feedback fields read (``Dialect.feedback_doc``)."""
        return self._expr.feedback_types

    def _order_by(self, sort_by: Sequence[SortBy]) -> Sql:
        if len(sort_by) > MAX_SORT_FIELDS:
            raise InvalidQuery("sort_by", f"at most {MAX_SORT_FIELDS} fields, got {len(sort_by)}")
        terms = [self.d.order_term(self.sort_key(s.field, f"sort_by[{i}].field"), s.direction)
                 for i, s in enumerate(sort_by)]  # fmt: skip
        if not terms:  # weave: then id; the two differ only among equal start times
            return Sql("started_at_us ASC, seq ASC")
        last = sort_by[-1]
        if all(s.field in _INDEX_ORDERED for s in sort_by):
            # rows come out of an index, then by arrival: ties follow the index (weave
            # breaks them by id), and no sort step is needed; the parent index is ordered
            # by start time within a parent
            direction = last.direction.upper()
            if last.field == "parent_id":
                terms.append(Sql(f"started_at_us {direction}"))
            return join([*terms, Sql(f"seq {direction}")], ", ")
        # a sort step anyway: ties as weave breaks them
        if not any(s.field == "id" for s in sort_by):
            terms.append(Sql(f"id {last.direction.upper() if last.field == 'started_at' else 'DESC'}"))
        return join(terms, ", ")

    def select(self, limit: int | None, offset: int) -> Sql:
        return Sql(
            f"SELECT {sqlite_projection(self._json_columns)} FROM calls WHERE {self.where.text} "
            f"ORDER BY {self.order.text} LIMIT ? OFFSET ?",
            (*self.where.params, *self.order.params, -1 if limit is None else limit, offset),
        )

    def count(self) -> Sql:
        return Sql(f"SELECT count(*) FROM calls WHERE {self.where.text}", self.where.params)
