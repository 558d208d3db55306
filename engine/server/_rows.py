"""Mapping between wire structs and ``calls`` table rows, and the SQL of call queries.

Timestamps are stored as integer microseconds since the Unix epoch so that sorting and
range comparisons are numeric; JSON-valued fields (inputs, output, summary, attributes,
otel_dump) are stored as JSON text and sent back verbatim. The ingest routes hand in their
raw models (``engine.server._ingest_models``), whose JSON fields are copied as sent; the
calls the server makes itself (OTel spans, tracked completions) hold Python values.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from typing import Any

import msgspec

from engine.server._ingest_models import (
    RAW_NULL,
    RawCompletedCall,
    RawEndedCall,
    RawStartedCall,
)
from engine.wire.calls import (
    CompletedCallSchemaForInsert,
    EndedCallSchemaForInsert,
    StartedCallSchemaForInsert,
)
from engine.wire.query import CallsFilter, SortBy

Start = StartedCallSchemaForInsert | RawStartedCall
End = EndedCallSchemaForInsert | RawEndedCall
Complete = CompletedCallSchemaForInsert | RawCompletedCall

START_COLUMNS = (
    "op_name", "display_name", "trace_id", "parent_id", "thread_id", "turn_id",
    "started_at_us", "attributes", "inputs", "otel_dump", "wb_user_id", "wb_run_id",
    "wb_run_step",
)  # fmt: skip
_END_PAYLOAD = ("ended_at_us", "exception", "output", "summary", "wb_run_step_end")
END_COLUMNS = ("trace_id", "started_at_us", *_END_PAYLOAD)
COMPLETE_COLUMNS = (*START_COLUMNS, *_END_PAYLOAD)

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_ONE_US = _dt.timedelta(microseconds=1)
_json = msgspec.json.Encoder()


class InvalidQuery(ValueError):
    """A query names something this server cannot do; ``field`` says which part."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def to_us(value: _dt.datetime | None) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:  # the wire is UTC; a naive time means UTC
        value = value.replace(tzinfo=_dt.timezone.utc)
    return (value - _EPOCH) // _ONE_US


def from_us(value: int | None) -> _dt.datetime | None:
    return None if value is None else _EPOCH + value * _ONE_US


def _json_text(value: Any) -> str:
    """JSON text of a Python value; a ``msgspec.Raw`` is copied verbatim (msgspec encodes it so)."""
    return _json.encode(value).decode()


def _opt_json_text(value: Any) -> str | None:
    """SQL NULL for a missing value: None in a typed model, JSON null in a raw one."""
    return None if value is None or value == RAW_NULL else _json_text(value)


def _start_fields(s: Start | Complete) -> tuple:
    return (
        s.op_name, s.display_name, s.trace_id, s.parent_id, s.thread_id, s.turn_id,
        to_us(s.started_at), _json_text(s.attributes), _json_text(s.inputs),
        _opt_json_text(s.otel_dump), s.wb_user_id, s.wb_run_id, s.wb_run_step,
    )  # fmt: skip


def _end_payload(e: End | Complete) -> tuple:
    return (to_us(e.ended_at), e.exception, _json_text(e.output), _json_text(e.summary),
            e.wb_run_step_end)  # fmt: skip


def start_row(s: Start) -> tuple:
    return (s.project_id, s.id, *_start_fields(s))


def end_row(e: End) -> tuple:
    return (e.project_id, e.id, e.trace_id, to_us(e.started_at), *_end_payload(e))


def complete_row(c: Complete) -> tuple:
    return (c.project_id, c.id, *_start_fields(c), *_end_payload(c))


# -- reading ------------------------------------------------------------------------------

SELECT_COLUMNS = ("project_id", "id", *COMPLETE_COLUMNS)
_JSON_COLUMNS = frozenset({"attributes", "inputs", "otel_dump", "output", "summary"})
_TIME_COLUMNS = {"started_at_us": "started_at", "ended_at_us": "ended_at"}


def row_to_call(row: Sequence[Any]) -> dict[str, Any]:
    """A row as a CallSchema-shaped dict whose JSON fields are passed through as raw JSON."""
    call: dict[str, Any] = {}
    for name, value in zip(SELECT_COLUMNS, row, strict=True):
        if name in _TIME_COLUMNS:
            call[_TIME_COLUMNS[name]] = from_us(value)
        elif name == "otel_dump":
            continue  # not part of CallSchema
        elif name in _JSON_COLUMNS:
            call[name] = None if value is None else msgspec.Raw(value.encode())
        else:
            call[name] = value
    return call


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


class Page(msgspec.Struct, frozen=True):
    limit: int | None = None
    offset: int = 0


class Selection:
    """The WHERE and ORDER BY of a call query, built from a filter and sort list."""

    def __init__(
        self,
        project_id: str,
        flt: CallsFilter | None = None,
        sort_by: list[SortBy] | None = None,
    ) -> None:
        self._where = ["project_id = ?", "op_name IS NOT NULL"]
        self._params: list[Any] = [project_id]
        if flt is not None:
            self._add_filter(flt)
        self._order = self._order_by(sort_by or [])

    def _add_filter(self, flt: CallsFilter) -> None:
        for name in _UNSUPPORTED_FILTERS:
            if getattr(flt, name):
                raise InvalidQuery(f"filter.{name}", "not supported by engine serve")
        if flt.op_names is not None:
            self._add_op_names(flt.op_names)
        for name, column in _IN_FILTERS.items():
            values = getattr(flt, name)
            if values is not None:
                self._where.append(f"{column} IN ({', '.join('?' * len(values))})")
                self._params.extend(values)
        if flt.trace_roots_only:
            self._where.append("parent_id IS NULL")

    def _add_op_names(self, op_names: list[str]) -> None:
        """Exact names, or a ``name:*`` wildcard meaning every version of that op (as weave)."""
        terms = []
        for name in op_names:
            if name.endswith(":*"):
                terms.append("substr(op_name, 1, ?) = ?")
                self._params.extend((len(name) - 1, name[:-1]))
            else:
                terms.append("op_name = ?")
                self._params.append(name)
        self._where.append(f"({' OR '.join(terms)})" if terms else "0")

    @staticmethod
    def _order_by(sort_by: list[SortBy]) -> str:
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
        terms.append("seq ASC")  # a total order, so limit/offset pages never overlap
        return ", ".join(terms)

    def select_sql(self, page: Page) -> tuple[str, list[Any]]:
        sql = (
            f"SELECT {', '.join(SELECT_COLUMNS)} FROM calls WHERE {' AND '.join(self._where)} "
            f"ORDER BY {self._order} LIMIT ? OFFSET ?"
        )
        limit = -1 if page.limit is None else page.limit
        return sql, [*self._params, limit, page.offset]

    def count_sql(self) -> tuple[str, list[Any]]:
        return f"SELECT count(*) FROM calls WHERE {' AND '.join(self._where)}", list(self._params)
