"""How SQLite spells the pieces of a call query (:mod:`engine.server._calls_sql` writes
the query; another SQL store subclasses :class:`Dialect` and overrides the spellings, not
the semantics)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from engine.server._calls_feedback import ANY_TYPE
from engine.server._sql_text import Sql, balanced, wrap


class Dialect:
    """How SQLite spells the pieces of a call query; another engine overrides these."""

    time_columns = {"started_at": "started_at_us", "ended_at": "ended_at_us"}
    # a call is matched once its start arrived (a row may hold only its end so far)
    started = "op_name IS NOT NULL"

    def json_path(self, parts: Sequence[str]) -> str:
        return "$" + "".join(f"[{p}]" if p.isdigit() else '."' + p.replace('"', '\\"') + '"'
                             for p in parts)  # fmt: skip

    def json_value(self, column: Sql, parts: Sequence[str]) -> Sql:
        return Sql(f"json_extract({column.text}, ?)", (*column.params, self.json_path(parts)))

    def json_type(self, column: Sql, parts: Sequence[str]) -> Sql:
        return Sql(f"json_type({column.text}, ?)", (*column.params, self.json_path(parts)))

    def feedback_doc(self, index: int, feedback_type: str) -> Sql:
        """The JSON of the call's oldest feedback of ``feedback_type`` (``*``: of any type),
        NULL if it has none: read through the ``feedback_by_ref`` index (``index`` numbers
        the feedback types of one query; a store that joins them names its columns by it)."""
        return wrap("(SELECT f.doc FROM feedback AS f WHERE {} ORDER BY f.created_at_us, f.rowid "
                    "LIMIT 1)", self._call_feedback(feedback_type))  # fmt: skip

    def any_feedback(self, index: int, feedback_type: str, test: Callable[[Sql], Sql]) -> Sql:
        """Whether any of the call's feedback of ``feedback_type`` passes ``test`` (given
        the column of its JSON)."""
        return wrap("EXISTS (SELECT 1 FROM feedback AS f WHERE {} AND {})",
                    self._call_feedback(feedback_type), test(Sql("f.doc")))  # fmt: skip

    @staticmethod
    def _call_feedback(feedback_type: str) -> Sql:
        of_type = "" if feedback_type == ANY_TYPE else " AND json_extract(f.doc, '$.feedback_type') = ?"
        return Sql("f.project_id = calls.project_id AND json_extract(f.doc, '$.weave_ref') = "
                   f"'weave:///' || calls.project_id || '/call/' || calls.id{of_type}",
                   () if feedback_type == ANY_TYPE else (feedback_type,))  # fmt: skip

    def json_text(self, column: Sql, parts: Sequence[str]) -> Sql:
        """A JSON path as text, a boolean as ``true`` / ``false`` (as weave reads feedback)."""
        return wrap("(CASE {} WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' ELSE {} END)",
                    self.json_type(column, parts), self.cast(self.json_value(column, parts), "string"))  # fmt: skip

    def feedback_sort_key(self, column: Sql, parts: Sequence[str]) -> Sql:
        """:meth:`json_sort_key`, a boolean as the text ``true`` / ``false`` (after numbers)."""
        return wrap("(CASE {} WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' ELSE {} END)",
                    self.json_type(column, parts), self.json_value(column, parts))  # fmt: skip

    def cast(self, value: Sql, to: str) -> Sql:
        sql_type = {"int": "INTEGER", "double": "REAL", "bool": "INTEGER", "string": "TEXT"}[to]
        return wrap(f"CAST({{}} AS {sql_type})", value)

    def contains(self, haystack: Sql, needle: Sql, case_insensitive: bool) -> Sql:
        if case_insensitive:
            return wrap("(instr(lower({}), lower({})) > 0)", haystack, needle)
        return wrap("(instr({}, {}) > 0)", haystack, needle)

    def ref_name(self, column: str) -> str:
        """The object name of a ``weave:///…/op/<name>:<digest>`` ref (a function that
        ``_sqlite_db.connect`` registers)."""
        return f"engine_ref_name({column})"

    def has_string(self, column: str, test: str) -> str:
        """Any string anywhere in the JSON of ``column`` passing ``test`` (on ``t.value``)."""
        return f"EXISTS (SELECT 1 FROM json_tree({column}) t WHERE t.type = 'text' AND {test})"

    def json_sort_key(self, column: Sql, parts: Sequence[str]) -> Sql:
        """A JSON path as a sort key: SQLite orders NULL, then numbers, then text."""
        return self.json_value(column, parts)

    def in_list(self, column: str) -> str:
        """``column`` is one of the strings of a JSON array bound to the one ``?``."""
        return f"{column} IN (SELECT value FROM json_each(?))"

    def starts_with_any(self, column: str, prefixes: list[str]) -> Sql:
        """``column`` starts with one of ``prefixes``, as ranges an index on it can seek
        (``col >= 'p' AND col < 'q'``, q the prefix with its last character + 1): the
        evaluations page asks for ``Evaluation.evaluate:*`` among a project's calls, which
        by ``substr`` read every call of the project (84 ms at 200k, for a count)."""
        ranges = [Sql(f"({column} >= ? AND {column} < ?)", (p, p[:-1] + chr(ord(p[-1]) + 1)))
                  for p in prefixes if p]
        return balanced(ranges, " OR ") if ranges else Sql("0")

    def has_prefix(self, column: str) -> str:
        """``column`` starts with one of the strings of a JSON array bound to the one ``?``."""
        return (f"EXISTS (SELECT 1 FROM json_each(?) AS p "
                f"WHERE substr({column}, 1, length(p.value)) = p.value)")  # fmt: skip

    def plain_number(self, text: Sql, allow_dot: bool) -> Sql:
        """Text that is digits (with at most one dot when ``allow_dot``): nothing else
        converts, so '1e3' or 'abc' compare as NULL instead of SQLite's 0."""
        dots = "<= 1" if allow_dot else "= 0"
        return wrap("({} != '' AND {} NOT GLOB '*[^0-9.]*' AND {} GLOB '*[0-9]*' AND "
                     f"length({{}}) - length(replace({{}}, '.', '')) {dots})",
                     text, text, text, text, text)  # fmt: skip

    def error_count(self) -> Sql:
        """``summary.status_counts.error`` (what makes a status ``descendant_error``)."""
        return Sql("json_extract(summary, '$.status_counts.error')")

    def order_term(self, key: Sql, direction: str) -> Sql:
        """One ORDER BY term; SQLite puts NULLs first going up, last going down."""
        return wrap(f"{{}} {direction.upper()}", key)


SQLITE = Dialect()
