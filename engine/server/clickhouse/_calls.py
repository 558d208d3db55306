"""The call statements of the ClickHouse store: parts as JSON lines in, merged calls out.

Writes: every start, end, complete call, rename and delete becomes one row of
``call_part_log`` (migration 0003): large batches as the parts themselves, which ClickHouse
parses (:func:`bulk_parts`), small ones and the server's own writes as rows encoded by
msgspec in one C call per batch (:func:`call_parts`).

Reads: one ``GROUP BY id`` over the parts of the calls stored as several parts merges
them (the inner query, its columns named ``m_*``), only the columns the query needs; a
call stored as one part is read as it is; the outer query filters, sorts and pages.
Values are bound as query parameters (``{name:Type}``); column names come from
whitelists, never from the request.
"""

from __future__ import annotations

import itertools
import operator
import re
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from engine.server._calls_sql import Selection
from engine.server._ingest_models import RawCompletedCall, RawEndedCall, RawStartedCall
from engine.server._page_ends import direction
from engine.server._rows import (
    END_COLUMNS,
    RAW_COLUMNS,
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
PARTS_TABLE = "call_part_log"  # migration 0003
PART_COLUMNS = ("project_id", "id", "version", "has_start", "has_end", "has_name", "is_delete",
                *START_COLUMNS, *_END_PAYLOAD)  # fmt: skip
_NO_START = (None,) * len(START_COLUMNS)
_NO_END = (None,) * len(_END_PAYLOAD)
_NO_NAME_FIELDS = (None,) * (len(START_COLUMNS) - 2)
_lines = msgspec.json.Encoder()
_RAW_TYPES = frozenset({RawStartedCall, RawEndedCall, RawCompletedCall})
_output = operator.attrgetter("output")

# -- writing ------------------------------------------------------------------------------


def call_parts(starts: Sequence[Start], ends: Sequence[End], completes: Sequence[Complete],
               first_version: int) -> tuple[bytes, int]:  # fmt: skip
    """The rows of one batch built here as JSON lines (``PART_COLUMNS``), versions from
    ``first_version`` on; returns (body, rows). For small batches and the calls the
    server makes itself; large batches of the ingest routes go through :func:`bulk_parts`."""
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


def bulk_ready(*kinds: Sequence[Any]) -> bool:
    """Whether every part is one of the raw ingest models :func:`bulk_parts` encodes."""
    return {type(x) for kind in kinds for x in kind} <= _RAW_TYPES


def bulk_parts(starts: Sequence[Start], ends: Sequence[End], completes: Sequence[Complete]) -> bytes:
    """A batch as ClickHouse parses it itself (:data:`BULK_INSERT`): one JSON array per
    part, ``[<the part as sent, re-encoded by msgspec in C>, <base64 of its output>]``.

    Nothing is built per call in Python but the pair: ClickHouse reads each JSON field
    (inputs, attributes, summary: objects) verbatim as text, converts the times and
    numbers, numbers the parts from the batch's first version. ``output`` may be any JSON
    value, and ClickHouse reads a JSON string as its unquoted text, so it travels apart as
    the bytes of its raw JSON (msgspec writes bytes as base64, ClickHouse decodes them)."""
    return b"".join((
        _lines.encode_lines(zip(starts, itertools.repeat(b""))),
        _lines.encode_lines(zip(ends, map(bytes, map(_output, ends)))),
        _lines.encode_lines(zip(completes, map(bytes, map(_output, completes)))),
    ))  # fmt: skip


def _iso_us(text: str) -> str:
    """SQL: microseconds since the epoch of an RFC 3339 time as msgspec writes it
    (``YYYY-MM-DDTHH:MM:SS[.ffffff][Z|±HH:MM]``: no or six fraction digits, no zone
    meaning UTC), for every year 0001-9999 (ClickHouse's DateTime64 holds 1900-2299
    only): the civil-date arithmetic of days_from_civil, in integers, fields at fixed
    places (no regular expression: this runs twice per part)."""
    def num(start: int, length: int, of: str = text) -> str:
        return f"toInt64OrZero(substring({of}, {start}, {length}))"

    month = num(6, 2)
    yy = f"({num(1, 4)} - ({month} <= 2))"
    era = f"intDiv({yy}, 400)"
    yoe = f"({yy} - {era} * 400)"
    doy = f"(intDiv(153 * (({month} + 9) % 12) + 2, 5) + {num(9, 2)} - 1)"
    doe = f"({yoe} * 365 + intDiv({yoe}, 4) - intDiv({yoe}, 100) + {doy})"
    days = f"({era} * 146097 + {doe} - 719468)"
    clock = f"{num(12, 2)} * 3600 + {num(15, 2)} * 60 + {num(18, 2)}"
    fraction = f"(substring({text}, 20, 1) = '.')"
    zone = f"substring({text}, if({fraction}, 27, 20))"  # '', 'Z' or '±HH:MM'
    offset = (f"if(length({zone}) = 6, ({num(2, 2, zone)} * 3600 + {num(5, 2, zone)} * 60) "
              f"* if(startsWith({zone}, '-'), -1, 1), 0)")  # fmt: skip
    return f"(({days} * 86400 + {clock} - {offset}) * 1000000 + if({fraction}, {num(21, 6)}, 0))"


_STRING_FIELDS = ("op_name", "display_name", "trace_id", "parent_id", "thread_id", "turn_id",
                  "attributes", "inputs", "otel_dump", "wb_user_id", "wb_run_id", "exception",
                  "summary")  # fmt: skip
_PART_TUPLE = ", ".join([
    "project_id String", "id String", "started_at Nullable(String)", "ended_at Nullable(String)",
    "wb_run_step Nullable(Int64)", "wb_run_step_end Nullable(Int64)",
    *(f"{name} Nullable(String)" for name in _STRING_FIELDS),
])  # fmt: skip
_BULK_VALUES = {
    "project_id": "c.project_id", "id": "c.id",
    "version": "{first_version:UInt64} + rowNumberInAllBlocks()",
    "has_start": "c.op_name IS NOT NULL", "has_end": "c.ended_at IS NOT NULL",
    "has_name": "0", "is_delete": "0",
    "started_at_us": _iso_us("c.started_at"), "ended_at_us": _iso_us("c.ended_at"),
    "wb_run_step": "c.wb_run_step", "wb_run_step_end": "c.wb_run_step_end",
    # a raw null (a left-out otel_dump or output) is NULL / 'null' as call_parts() stores them
    "otel_dump": "nullIf(c.otel_dump, 'null')",
    "output": "if(c.ended_at IS NULL, NULL, base64Decode(o))",
    **{name: f"c.{name}" for name in _STRING_FIELDS if name != "otel_dump"},
}  # fmt: skip


def bulk_insert(source: str) -> str:
    """The INSERT of :func:`bulk_parts`' body read from ``source``: ``input(…)`` over HTTP,
    a file's ``file(…)`` in chdb (:func:`bulk_structure` is the structure either takes)."""
    values = ", ".join(_BULK_VALUES[c] for c in PART_COLUMNS)
    return f"INSERT INTO {PARTS_TABLE} ({', '.join(PART_COLUMNS)}) SELECT {values} FROM {source}"


BULK_STRUCTURE = f"c Tuple({_PART_TUPLE}), o String"
BULK_FORMAT = "JSONCompactEachRow"
# objects as their verbatim text; fields ClickHouse has no column for are skipped
BULK_SETTINGS = {
    "input_format_json_read_objects_as_strings": 1,
    "input_format_json_ignore_unknown_keys_in_named_tuple": 1,
    "input_format_skip_unknown_fields": 1,
    # one thread parses each insert (several inserts run at once): handing a 10k-part
    # batch to parser threads cost more CPU than it saved (~1-2 us per part)
    "input_format_parallel_parsing": 0,
}


def rename_part(project_id: str, call_id: str, name: str | None, version: int) -> bytes:
    # display_name is START_COLUMNS[1]: op_name stays NULL, the rest too
    row = (project_id, call_id, version, 0, 0, 1, 0, None, name, *_NO_NAME_FIELDS, *_NO_END)
    return _lines.encode_lines([row])


def delete_parts(project_id: str, call_ids: Iterable[str], first_version: int) -> bytes:
    rows = [(project_id, call_id, first_version + i, 0, 0, 0, 1, *_NO_START, *_NO_END)
            for i, call_id in enumerate(call_ids)]  # fmt: skip
    return _lines.encode_lines(rows)


# -- reading ------------------------------------------------------------------------------

_VISIBLE_END = "maxIf(version, has_end) > maxIf(version, is_delete)"
# the projection of a read, in SELECT_COLUMNS order (otel_dump too: an OTel span reads
# back as attributes.otel_span)
_READ_COLUMNS = SELECT_COLUMNS[2:]
_MERGED = frozenset(SELECT_COLUMNS[2:])
_COLUMN_NAMES = re.compile(r"\b(" + "|".join(sorted(_MERGED, key=len, reverse=True)) + r")\b")
_UINT64_MAX = 2**64 - 1


def _latest(column: str, carried: str) -> str:
    """The value of ``column`` in the newest part for which ``carried`` holds, NULL kept
    (argMax skips NULL values, so the NULL flag and the value go apart; both are argMax
    states of plain types, twice as fast to merge as a Nullable wrapped in a tuple)."""
    return (f"if(argMaxIf(isNull({column}), version, {carried}), NULL, "
            f"argMaxIf(assumeNotNull({column}), version, {carried}))")


def _merged_expr(column: str) -> str:
    """How one column of a call is merged from its parts (inside ``GROUP BY id``): from
    the newest part that carries its group, so a start that sets a field back to NULL
    sticks and a resent part changes nothing."""
    if column == "op_name":  # never NULL in a start
        return "argMaxIf(op_name, version, has_start)"
    if column == "display_name":  # a start or a rename sets it
        return _latest(column, "has_start OR has_name")
    if column in _END_PAYLOAD:  # an end from before the last delete is not this call's
        return f"if({_VISIBLE_END}, {_latest(column, 'has_end')}, NULL)"
    return _latest(column, "has_start")


def _alone_expr(column: str) -> str:
    """The merged value of ``column`` for a call stored as one part (a start or a complete
    call): the part's own value, as :func:`_merged_expr` gives it for one part."""
    return f"if(has_end, {column}, NULL)" if column in _END_PAYLOAD else column


def merged_calls(columns: Iterable[str], where: Sequence[str] = (), few: bool = False) -> str:
    """The visible calls of ``{project_id:String}`` as a relation with the columns of
    SQLite's ``calls`` (``id``, ``project_id``, ``seq``: arrival order, and ``columns``);
    only those columns are merged. ``where``: conditions on the stored parts (``id``).

    Only the calls stored as several parts go through ``GROUP BY id``; a call stored as one
    part (the engine's complete calls, mostly) is read as that part: the same values, with
    no aggregate states built (a stream of 300k such calls: ~5.5 -> ~1.9 us of ClickHouse
    CPU per call in chDB). ``few``: ``where`` picks a few calls (by id), all merged by one
    ``GROUP BY``, a statement ClickHouse plans in half the time of the two branches."""
    names = sorted(set(columns) - {"id", "project_id"})
    parts = " AND ".join(["project_id = {project_id:String}", *where])
    several = f"(SELECT id FROM {PARTS_TABLE} WHERE {parts} GROUP BY id HAVING count() > 1)"
    alone = "".join(f", {_alone_expr(c)} AS m_{c}" for c in names)
    merged = "".join(f", {_merged_expr(c)} AS m_{c}" for c in names)
    renamed = "".join(f", m_{c} AS {c}" for c in names)
    visible = "HAVING maxIf(version, has_start) > maxIf(version, is_delete)"
    if few:
        return (f"SELECT m_id AS id, {{project_id:String}} AS project_id, m_seq AS seq{renamed} "
                f"FROM (SELECT id AS m_id, min(version) AS m_seq{merged} FROM {PARTS_TABLE} "
                f"WHERE {parts} GROUP BY id {visible})")  # fmt: skip
    if not names:  # nothing to merge (a plain count): one GROUP BY over every part is cheaper
        return (f"SELECT m_id AS id, {{project_id:String}} AS project_id, m_seq AS seq FROM ("
                f"SELECT id AS m_id, min(version) AS m_seq FROM {PARTS_TABLE} WHERE {parts} "
                f"GROUP BY id {visible})")  # fmt: skip
    return (
        f"SELECT m_id AS id, {{project_id:String}} AS project_id, m_seq AS seq{renamed} FROM ("
        f"SELECT id AS m_id, version AS m_seq{alone} FROM {PARTS_TABLE} "
        f"WHERE {parts} AND has_start AND NOT is_delete AND id NOT IN {several} UNION ALL "
        f"SELECT id AS m_id, min(version) AS m_seq{merged} FROM {PARTS_TABLE} "
        f"WHERE {parts} AND id IN {several} GROUP BY id {visible})"
    )


# filters on what only a start sets: a call matches them by its newest start's values
_START_FILTERS = ("op_names", "input_refs", "parent_ids", "trace_ids", "thread_ids", "turn_ids",
                  "trace_roots_only", "wb_user_ids", "wb_run_ids")  # fmt: skip
_ID_FILTERS = ("parent_ids", "trace_ids", "thread_ids", "turn_ids", "wb_user_ids", "wb_run_ids")
# the most calls a query is narrowed to (their ids are one bound array)
CANDIDATES_MAX = 2_000


def _start_filter(flt: CallsFilter | None) -> CallsFilter | None:
    """The part of ``flt`` a start alone decides (None when there is none)."""
    if flt is None:
        return None
    kept = {name: getattr(flt, name) for name in _START_FILTERS if getattr(flt, name)}
    return CallsFilter(**kept) if kept else None


class CallsSql:
    """One call query in ClickHouse: the shared builder's WHERE and ORDER BY over
    :func:`merged_calls`, with only the columns they and the answer need merged.

    Where few calls can match, only their parts are merged instead of the whole project
    (:meth:`candidates`, then :meth:`narrow`): a call's merged value of a field only a
    start sets (trace, parent, op, thread…) is its newest start's, so every call that
    matches such filters has a start part that matches them, found by scanning a column
    or two of the parts; the outer WHERE still checks the merged values. A page by start
    time (the newest or oldest ``limit + offset`` calls) is looked for among the calls
    with the newest (oldest) start parts first."""

    def __init__(self, query: CallsQuery) -> None:
        selection = Selection(query, CLICKHOUSE)  # InvalidQuery before anything runs
        self.query = query
        self.params: dict[str, Any] = {"project_id": query.project_id}
        self._where = bind(selection.where, self.params)
        self._order = bind(selection.order, self.params)
        types = selection.feedback_types
        self._feedback = " " + bind(CLICKHOUSE.feedback_join(types), self.params) if types else ""
        self._parts_where = []
        flt = query.filter
        if flt is not None and flt.call_ids:  # on the sorting key: only their parts
            self.params["call_ids"] = list(flt.call_ids)
            self._parts_where.append("has({call_ids:Array(String)}, id)")
        starts = ["project_id = {project_id:String}", "has_start", *self._parts_where]
        self._start_filter = _start_filter(flt)
        if self._start_filter is not None:
            only = CallsQuery(project_id=query.project_id, filter=self._start_filter)
            starts.append(bind(Selection(only, CLICKHOUSE).where, self.params))
        self._starts = " AND ".join(starts)
        self.direction = self._by_start(query)
        ends_near = query.limit is not None and query.limit + query.offset <= CANDIDATES_MAX
        self.by_start = self.direction if ends_near else None
        self._few = False

    @staticmethod
    def _by_start(q: CallsQuery) -> str | None:
        """``DESC`` / ``ASC`` for a page ordered by start time alone and filtered only by
        what a start decides, of at most :data:`CANDIDATES_MAX` rows."""
        if q.limit is None or q.limit > CANDIDATES_MAX or q.query is not None:
            return None
        if q.filter is not None and q.filter.output_refs:
            return None
        return direction(q)

    def candidates(self, page: bool = True) -> str | None:
        """SQL of the ids (first column) of the calls that can match, or None where it would
        not narrow the query. Ordered by start time for a page by start time (``page``):
        the ``limit + offset`` first start parts, with any ties; else every matching start
        part, at most ``CANDIDATES_MAX + 1`` rows read."""
        if page and self.by_start is not None:
            return (f"SELECT id, started_at_us FROM {PARTS_TABLE} WHERE {self._starts} "
                    f"ORDER BY started_at_us {self.by_start} "
                    f"LIMIT {self.query.limit + self.query.offset} WITH TIES")  # fmt: skip
        if self._start_filter is None or not any(
                getattr(self._start_filter, name) for name in _ID_FILTERS):
            return None  # an op or the roots alone: rarely few calls, not worth a look
        return (f"SELECT DISTINCT id FROM {PARTS_TABLE} WHERE {self._starts} "
                f"LIMIT {CANDIDATES_MAX + 1}")  # fmt: skip

    def narrow(self, ids: list[str], threshold: int | None = None) -> None:
        """Read only the calls ``ids`` (and, for a page by start time, only those that
        start at ``threshold`` or beyond in its order)."""
        self.params["candidates"] = ids
        self._parts_where.append("id IN {candidates:Array(String)}")
        self._few = True
        if threshold is not None:
            self.params["threshold"] = threshold
            beyond = ">=" if self.direction == "DESC" else "<="
            self._where += f" AND started_at_us {beyond} {{threshold:Int64}}"

    def narrow_to_starts(self, rows: list[tuple], asked: int) -> str:
        """Narrow to the calls of ``rows``, the (id, start time) of the first ``asked`` start
        parts in this order, with ties: ``exact`` if fewer came (every start part that can
        match is among them), ``check`` if the page must come back full to be right (only
        calls up to the last one's start time), ``none`` if ties brought too many ids."""
        ids = list(dict.fromkeys(row[0] for row in rows))
        if len(rows) < asked:
            self.narrow(ids)
            return "exact"
        if len(ids) > 2 * CANDIDATES_MAX:  # ties past the limit: a few more at most
            return "none"
        self.narrow(ids, rows[-1][1])
        return "check"

    def after(self, started_at_us: int, seq: int) -> str:
        """The page that follows a call (its start time and arrival ``seq``) in this order:
        only calls past it, and the SQL of the candidates, the start parts from its start
        time on (at most :data:`CANDIDATES_MAX`, with ties), for :meth:`narrow`."""
        ahead, beyond = (">", ">=") if self.direction == "ASC" else ("<", "<=")
        self.params["after_at"], self.params["after_seq"] = started_at_us, seq
        self._where += f" AND (started_at_us, seq) {ahead} ({{after_at:Int64}}, {{after_seq:UInt64}})"
        return (f"SELECT id, started_at_us FROM {PARTS_TABLE} WHERE {self._starts} "
                f"AND started_at_us {beyond} {{after_at:Int64}} "
                f"ORDER BY started_at_us {self.direction} LIMIT {CANDIDATES_MAX} WITH TIES")  # fmt: skip

    def _from(self, columns: Iterable[str], ordered: bool = True) -> str:
        # what the WHERE (as narrowed so far) and, for rows in order, the ORDER BY read
        used = set(_COLUMN_NAMES.findall(f"{self._where} {self._order if ordered else ''}"))
        return f"({merged_calls({*used, *columns}, self._parts_where, self._few)}) AS calls{self._feedback}"

    def select(self, limit: int | None, offset: int) -> str:
        """Rows in ``SELECT_COLUMNS`` order; a JSON column the query does not read
        (``CallsQuery.json_columns``) is NULL, and merged only if a filter or sort needs it."""
        wanted = self.query.json_columns
        skipped = frozenset(() if wanted is None else set(RAW_COLUMNS) - set(wanted))
        projection = ", ".join("NULL" if c in skipped else c for c in SELECT_COLUMNS)
        page = ""
        if limit is not None or offset:
            self.params["limit"] = _UINT64_MAX if limit is None else limit
            self.params["offset"] = offset
            page = " LIMIT {limit:UInt64} OFFSET {offset:UInt64}"
        read = [c for c in _READ_COLUMNS if c not in skipped]
        return (f"SELECT {projection} FROM {self._from(read)} WHERE {self._where} "
                f"ORDER BY {self._order}{page}")  # fmt: skip

    def count(self) -> str:
        return f"SELECT count() FROM {self._from((), ordered=False)} WHERE {self._where}"


def _ids_sql(project_id: str, flt: CallsFilter) -> tuple[str, dict[str, Any]]:
    sql = CallsSql(CallsQuery(project_id=project_id, filter=flt))
    return f"SELECT id FROM {sql._from((), ordered=False)} WHERE {sql._where}", sql.params


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


# every project with visible calls and how many (the trace browser's first page): one pass
# over the part log in its sorting order, no column merged
PROJECT_COUNTS_SQL = (
    f"SELECT project_id, count() FROM (SELECT project_id, id FROM {PARTS_TABLE} "
    "GROUP BY project_id, id HAVING maxIf(version, has_start) > maxIf(version, is_delete)) "
    "GROUP BY project_id ORDER BY project_id"
)


def storage_sql(project_id: str) -> tuple[str, dict[str, Any]]:
    calls = merged_calls({"inputs", "output", "attributes", "summary"})
    text = ("SELECT sum(length(ifNull(inputs, '')) + length(ifNull(output, '')) "
            f"+ length(ifNull(attributes, '')) + length(ifNull(summary, ''))) FROM ({calls})")  # fmt: skip
    return text, {"project_id": project_id}
