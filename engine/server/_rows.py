"""Mapping between wire structs and ``calls`` table rows, and the SQL of call queries.

Timestamps are stored as integer microseconds since the Unix epoch so that sorting and
range comparisons are numeric; JSON-valued fields (inputs, output, summary, attributes,
otel_dump) are stored as JSON text and sent back verbatim. The ingest routes hand in their
raw models (``engine.server._ingest_models``), whose JSON fields are copied as sent; the
calls the server makes itself (OTel spans, tracked completions) hold Python values.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec

from engine.native._accel import native as _native
from engine.server._ingest_models import (
    RAW_NULL,
    RawCompletedCall,
    RawEndedCall,
    RawStartedCall,
)
from engine.server._limits import MAX_TIME_US, MIN_TIME_US
from engine.wire.calls import (
    CompletedCallSchemaForInsert,
    EndedCallSchemaForInsert,
    StartedCallSchemaForInsert,
)

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


def to_us(value: _dt.datetime | None) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:  # the wire is UTC; a naive time means UTC
        value = value.replace(tzinfo=_dt.timezone.utc)
    return (value - _EPOCH) // _ONE_US


def from_us(value: int | None) -> _dt.datetime | None:
    """The stored time as a UTC datetime. Rows a server before the timestamp limits stored
    may hold times no datetime can (a year 0 in UTC): they read as the nearest one that
    can, instead of failing every read of their project."""
    if value is None:
        return None
    return _EPOCH + min(max(value, MIN_TIME_US), MAX_TIME_US) * _ONE_US


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
# the JSON-valued columns: read as msgspec.Raw, and what makes a row big
RAW_COLUMNS = ("attributes", "inputs", "otel_dump", "output", "summary")
# SQLite's projection: JSON text read as its UTF-8 bytes, which become msgspec.Raw as they
# are (as text, sqlite3 decodes each value into a str and the row encodes it back)
SQLITE_SELECT = tuple(f"CAST({c} AS BLOB)" if c in RAW_COLUMNS else c for c in SELECT_COLUMNS)
_TIME_COLUMNS = {"started_at_us": "started_at", "ended_at_us": "ended_at"}


def sqlite_projection(json_columns: Sequence[str] | None) -> str:
    """:data:`SQLITE_SELECT` as SQL text, NULL in place of each JSON column not among
    ``json_columns`` (None: every one is read)."""
    if json_columns is None:
        return ", ".join(SQLITE_SELECT)
    return ", ".join("NULL" if c in RAW_COLUMNS and c not in json_columns else sql
                     for c, sql in zip(SELECT_COLUMNS, SQLITE_SELECT))  # fmt: skip


# the output name of each column, and where the columns that need converting sit
_CALL_KEYS = tuple(_TIME_COLUMNS.get(c, c) for c in SELECT_COLUMNS)
_TIME_AT = tuple((i, _TIME_COLUMNS[c]) for i, c in enumerate(SELECT_COLUMNS) if c in _TIME_COLUMNS)
_JSON_AT = tuple((i, c) for i, c in enumerate(SELECT_COLUMNS) if c in RAW_COLUMNS)


def row_to_call(row: Sequence[Any]) -> dict[str, Any]:
    """A row as a CallSchema-shaped dict whose JSON fields are passed through as raw JSON.

    Built by zip, then the few converted columns patched: a stream runs this per row, and
    a per-column loop cost as much as reading the row from SQLite."""
    call = dict(zip(_CALL_KEYS, row, strict=True))
    for i, key in _TIME_AT:
        call[key] = from_us(row[i])
    for i, key in _JSON_AT:
        value = row[i]
        if value is not None:  # bytes as SQLite reads them (no copy), text from others
            call[key] = msgspec.Raw(value if value.__class__ is bytes else value.encode())
    return call


# what each column becomes in C: 0 itself, 1 a UTC datetime, 2 msgspec.Raw
_KINDS = bytes(1 if c in _TIME_COLUMNS else 2 if c in RAW_COLUMNS else 0 for c in SELECT_COLUMNS)


def rows_to_calls(rows: list[tuple]) -> list[dict[str, Any]]:
    """:func:`row_to_call` of each row; in C when the accelerator is built (the same
    dicts for ~a fifth of the CPU: a stream runs this per row)."""
    if _native is None:
        return [row_to_call(row) for row in rows]
    return _native.call_dicts(rows, _CALL_KEYS, _KINDS, msgspec.Raw, from_us)


def _take_rows(rows: Iterator[Sequence[Any]], want: int, max_bytes: int,
               sized: tuple[int, ...]) -> tuple[list[Sequence[Any]], bool]:  # fmt: skip
    """Up to ``want`` of ``rows`` (a cursor, a block), fewer once the values at ``sized``
    of the rows taken pass ``max_bytes`` (the row that passes it is the last); and whether
    ``rows`` ran out. A read request holds its chunk about three times over (the rows, the
    calls made of them, the encoded lines): counted in rows alone, a page of 1 MB outputs
    held ~150 MB per request. Each row is measured as it comes: fetching several before
    looking would let a run of big rows pass the limit together. In C when the accelerator
    is built (``_rows.c``; here ~0.35 µs a row, a stream's rows run through it)."""
    taken: list[Sequence[Any]] = []
    used = 0
    for row in rows:
        taken.append(row)
        for i in sized:
            if (value := row[i]) is not None:
                used += len(value)
        if used >= max_bytes or len(taken) >= want:
            return taken, False
    return taken, True


take_rows = getattr(_native, "take_rows", None) or _take_rows
