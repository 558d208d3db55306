"""ClickHouse's spellings for the shared call-query builder (:mod:`engine.server._calls_sql`).

The builder writes SQLite-shaped SQL with ``?`` placeholders over a relation named
``calls`` whose columns are SQLite's (``started_at_us``, ``seq``…); the ClickHouse store
gives it that relation as a subquery that merges each call's parts. This module says how
ClickHouse spells what SQLite spells differently, with SQLite's semantics:

- ``json_extract`` gives a string's text, a number, 1/0 for booleans, NULL for null or a
  missing path, the JSON text of an object or array: :meth:`json_value` (always text
  here; the builder casts it where it compares numbers);
- ``json_type`` names ``integer``/``real``/``text``/``true``/``false``/``null``/``object``/
  ``array``, NULL for a missing path: :meth:`json_type`;
- NULLs sort first going up and last going down (ClickHouse: last both ways).

Placeholders become ClickHouse query parameters (``{p0:String}``): values are never SQL text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from engine.server._calls_dialect import Dialect
from engine.server._calls_feedback import ANY_TYPE, MULTI_VALUE_TYPES
from engine.server._calls_sql import _json_list
from engine.server._sql_text import Sql, join, wrap

# every string literal of a JSON text (keys too; refs are never keys), its contents as the
# first group; no '?' in it, since bind() takes every '?' for a placeholder
_JSON_STRINGS = r'"(([^"\\\\]|\\\\.)*)"'
_INT64 = (-(2**63), 2**63)


class ClickHouseDialect(Dialect):
    # the merged calls are those whose start arrived (after their last delete) already;
    # saying it again would merge op_name, a string, for every call of a count
    started = "1"

    def _args(self, column: Sql, parts: Sequence[str]) -> Sql:
        """ClickHouse's JSON path: keys as strings, list positions counted from 1."""
        args = [Sql("?", (int(p) + 1,)) if p.isdigit() else Sql("?", (p,)) for p in parts]
        return join([column, *args], ", ")

    @staticmethod
    def _has(parts: Sequence[str]) -> str:
        """Whether the path is there (the whole value: whether the column is valid JSON)."""
        return "JSONHas({})" if parts else "isValidJSON(ifNull({}, ''))"

    def json_value(self, column: Sql, parts: Sequence[str]) -> Sql:
        at = self._args(column, parts)
        return wrap(
            "multiIf(NOT " + self._has(parts) + ", NULL, JSONType({}) = 'String', JSONExtractString({}), "
            "JSONType({}) = 'Null', NULL, JSONType({}) = 'Bool', "
            "if(JSONExtractBool({}), '1', '0'), JSONExtractRaw({}))",
            at, at, at, at, at, at, at,
        )

    def json_type(self, column: Sql, parts: Sequence[str]) -> Sql:
        at = self._args(column, parts)
        return wrap(
            "multiIf(NOT " + self._has(parts) + ", NULL, JSONType({}) = 'Bool', "
            "if(JSONExtractBool({}), 'true', 'false'), JSONType({}) IN ('Int64', 'UInt64'), "
            "'integer', JSONType({}) = 'Double', 'real', JSONType({}) = 'String', 'text', "
            "lower(toString(JSONType({}))))",
            at, at, at, at, at, at, at,
        )

    def json_sort_key(self, column: Sql, parts: Sequence[str]) -> Sql:
        # as SQLite orders json_extract's values: NULL, then numbers (booleans as 1/0), then text
        return self._sort_key(column, parts, "('integer', 'real', 'true', 'false')", None)

    def feedback_sort_key(self, column: Sql, parts: Sequence[str]) -> Sql:
        kind = self.json_type(column, parts)
        text = wrap("if({} IN ('true', 'false'), {}, {})", kind, kind, self.json_value(column, parts))
        return self._sort_key(column, parts, "('integer', 'real')", text)

    def _sort_key(self, column: Sql, parts: Sequence[str], numbers: str, text: Sql | None) -> Sql:
        """NULL, then the kinds in ``numbers`` by value, then the rest by ``text`` (the
        value's text by default)."""
        kind, value = self.json_type(column, parts), self.json_value(column, parts)
        return wrap(
            f"tuple(multiIf({{}} IS NULL, 0, {{}} IN {numbers}, 1, 2), "
            f"if({{}} IN {numbers}, accurateCastOrNull({{}}, 'Float64'), NULL), {{}})",
            kind, kind, kind, value, value if text is None else text,
        )  # fmt: skip

    def cast(self, value: Sql, to: str) -> Sql:
        if to == "string":
            return wrap("CAST({} AS Nullable(String))", value)
        sql_type = "Float64" if to == "double" else "Int64"
        return wrap(f"accurateCastOrNull({{}}, '{sql_type}')", value)

    def feedback_doc(self, index: int, feedback_type: str) -> Sql:
        """A column of :meth:`feedback_join` ('' for a call without such feedback: no path
        is in it, so every value read from it is NULL)."""
        return Sql(f"fb_doc{index}")

    def any_feedback(self, index: int, feedback_type: str, test: Callable[[Sql], Sql]) -> Sql:
        """Over ``fb_docs<i>`` of :meth:`feedback_join`, every feedback of a multi-valued type."""
        return wrap(f"arrayExists(fb_d -> {{}}, fb_docs{index})", test(Sql("fb_d")))

    def feedback_join(self, feedback_types: Sequence[str]) -> Sql:
        """``LEFT JOIN`` of each call's oldest feedback of each type (``fb_doc<i>``), and
        all of them for the multi-valued types (``fb_docs<i>``), to the relation ``calls``
        of ``{project_id:String}``: one pass over the project's feedback."""
        ref, prefix = "JSONExtractString(doc, 'weave_ref')", "concat('weave:///', {project_id:String}, '/call/')"
        of_type = "JSONExtractString(doc, 'feedback_type') = ?"
        docs = []
        for i, t in enumerate(feedback_types):
            if t == ANY_TYPE:
                docs.append(Sql(f"argMinIf(doc, (created_at_us, version), 1) AS fb_doc{i}"))
                continue
            docs.append(Sql(f"argMinIf(doc, (created_at_us, version), {of_type}) AS fb_doc{i}", (t,)))
            if t in MULTI_VALUE_TYPES:
                docs.append(Sql(f"groupArrayIf(doc, {of_type}) AS fb_docs{i}", (t,)))
        columns = join(docs, ", ")
        return Sql(f"LEFT JOIN (SELECT substring({ref}, length({prefix}) + 1) AS fb_call, "
                   f"{columns.text} FROM docs FINAL WHERE kind = 'feedback' AND "
                   f"project_id = {{project_id:String}} AND startsWith({ref}, {prefix}) "
                   "GROUP BY fb_call) AS fb ON fb.fb_call = calls.id", columns.params)  # fmt: skip

    def contains(self, haystack: Sql, needle: Sql, case_insensitive: bool) -> Sql:
        function = "positionCaseInsensitiveUTF8" if case_insensitive else "position"
        return wrap(f"({function}({{}}, {{}}) > 0)", haystack, needle)

    def ref_name(self, column: str) -> str:
        """``weave:///entity/project/op/<name>:<digest>`` → ``<name>`` (the text otherwise)."""
        parts = f"splitByChar('/', substring({column}, 10))"
        return (f"if(length({parts}) >= 4, "
                f"arrayStringConcat(arrayPopBack(splitByChar(':', {parts}[4])), ':'), {column})")  # fmt: skip

    def has_string(self, column: str, test: str) -> str:
        # the builder's test reads the string as ``t.value``; here it is the lambda's ``s``
        return (f"arrayExists(s -> {test.replace('t.value', 's')}, "
                f"extractAll(ifNull({column}, ''), '{_JSON_STRINGS}'))")

    def in_list(self, column: str) -> str:
        return f"has(JSONExtract(?, 'Array(String)'), {column})"

    def starts_with_any(self, column: str, prefixes: list[str]) -> Sql:
        return Sql(self.has_prefix(column), (_json_list(prefixes),))

    def has_prefix(self, column: str) -> str:
        return f"arrayExists(p -> startsWith({column}, p), JSONExtract(?, 'Array(String)'))"

    def plain_number(self, text: Sql, allow_dot: bool) -> Sql:
        # no '?' in the pattern: bind() would take it for a placeholder
        pattern = "'^([0-9]+|[0-9]*\\\\.[0-9]*)$'" if allow_dot else "'^[0-9]+$'"
        return wrap(f"(match({{}}, {pattern}) AND match({{}}, '[0-9]'))", text, text)

    def error_count(self) -> Sql:
        return Sql("JSONExtractFloat(ifNull(summary, ''), 'status_counts', 'error')")

    def order_term(self, key: Sql, direction: str) -> Sql:
        nulls = "NULLS FIRST" if direction.lower() == "asc" else "NULLS LAST"
        return wrap(f"{{}} {direction.upper()} {nulls}", key)


CLICKHOUSE = ClickHouseDialect()


def _type(value: Any) -> str:
    if value is None:
        return "Nullable(String)"
    if isinstance(value, bool):
        return "UInt8"
    if isinstance(value, int):
        return "Int64" if _INT64[0] <= value < _INT64[1] else "UInt64"
    if isinstance(value, float):
        return "Float64"
    return "String"


def bind(sql: Sql, params: dict[str, Any]) -> str:
    """``sql``'s text with each ``?`` a named ClickHouse parameter, added to ``params``.

    The builder puts no ``?`` inside a literal (values are always bound), so every ``?``
    is a placeholder."""
    pieces = sql.text.split("?")
    if len(pieces) != len(sql.params) + 1:
        raise AssertionError(f"{len(pieces) - 1} placeholders for {len(sql.params)} values")
    out = [pieces[0]]
    for value, piece in zip(sql.params, pieces[1:]):
        name = f"q{len(params)}"
        params[name] = int(value) if isinstance(value, bool) else value
        out.append(f"{{{name}:{_type(value)}}}{piece}")
    return "".join(out)
