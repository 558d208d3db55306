"""The server's call-ingest models: the wire insert schemas with JSON-valued fields kept raw.

The ingest routes store or count calls; they never look inside ``attributes``, ``inputs``,
``otel_dump``, ``output`` or ``summary``. Decoding those into Python objects (and, for
SQLite, encoding them back to text) was most of the cost of a call; as ``msgspec.Raw``
they stay slices of the body, stored verbatim, and msgspec still checks their JSON syntax.

Each model mirrors its model in :mod:`engine.wire.calls` field for field — names, order,
scalar types, defaults (``tests/server/test_ingest_models.py`` pins it). What the typed
decode checked and a raw one does not is checked by :func:`decode_ingest`:

- the kind of each raw field (``inputs`` must be an object, …), read from its first byte
  and reported in msgspec's own words, so a reason reads as it did with the typed decode;
- UTF-8: msgspec checks the syntax of a raw value, not the encoding of its strings.

One check is given up: a float literal beyond the double range (``1e400``), which the
typed decode refused as "Number out of range", is stored as sent; finding one would need
a scan of every number in the body.
"""

from __future__ import annotations

import datetime as _dt
import struct
from typing import ClassVar, TypeVar

import msgspec

from engine.server._body import decode_errors
from engine.server._limits import LimitExceeded, check_json_depth, check_time
from engine.wire._base import Nested, Request
from engine.wire._codec import native_struct_plan

# A left-out ``output`` or ``otel_dump``: the typed models' None. (msgspec cannot decode
# ``Raw | None``: that union accepts only null.)
RAW_NULL = msgspec.Raw(b"null")
_UTC = _dt.timezone.utc
# (first byte,) of a raw value; half the cost of memoryview(raw)[0], and this runs per field
_first_byte = struct.Struct("B").unpack_from
_OBJECT = (ord("{"),)
_NULL = (ord("n"),)  # the syntax is checked: a raw value starting with n is null
# msgspec names a raw value's kind by its first byte (msgspec strips the whitespace around it)
_KIND_BY_FIRST_BYTE = {
    ord("{"): "object", ord("["): "array", ord('"'): "str",
    ord("t"): "bool", ord("f"): "bool", ord("n"): "null",
}  # fmt: skip


def _kind(raw: msgspec.Raw) -> str:
    kind = _KIND_BY_FIRST_BYTE.get(_first_byte(raw)[0])
    if kind is not None:
        return kind
    text = bytes(raw)
    if text.lstrip(b"-0123456789"):
        return "float"
    # msgspec names an integer literal outside [-2**63, 2**64) a float, as it decodes one
    return "int" if -(2**63) <= int(text) < 2**64 else "float"


class _RawCall(Nested, kw_only=True, gc=False):
    """A call whose ``OBJECT_FIELDS`` must hold JSON objects (``otel_dump`` may be null).

    ``gc=False``: the fields are strings, times and raw slices, which make no cycles, and
    untracked structs spare the collector a pass over every call of a large batch.
    """

    OBJECT_FIELDS: ClassVar[tuple[str, ...]]
    TIME_FIELDS: ClassVar[tuple[str, ...]]
    INT_FIELDS: ClassVar[tuple[str, ...]]

    def ok(self) -> bool:
        """At a glance, the common case: every kind right, times in UTC, no integer field
        set. False sends the call to :func:`check_call`, which raises for a real fault and
        lets a legal value (a time with another offset, a step number) pass."""
        raise NotImplementedError

    def check_limits(self, where: str) -> None:
        """Times a UTC datetime can hold, integers SQLite can (:mod:`engine.server._limits`)."""
        for name in self.TIME_FIELDS:
            value = getattr(self, name)  # only another offset than UTC can leave the range:
            if value is not None and value.tzinfo is not _UTC:  # the path is formatted then
                check_time(value, f"{where}.{name}")
        for name in self.INT_FIELDS:
            value = getattr(self, name)
            if value is not None and not -(2**63) <= value < 2**63:
                raise LimitExceeded(f"{where}.{name}: {value} is outside the 64-bit integer range")


def raise_misfit(call: _RawCall, where: str) -> None:
    """msgspec's error for the first field of ``call`` that is not an object (422 to
    clients); nothing when every one is."""
    for name in call.OBJECT_FIELDS:
        raw, nullable = getattr(call, name), name == "otel_dump"
        first = _first_byte(raw)
        if first != _OBJECT and not (nullable and first == _NULL):
            expected = "object | null" if nullable else "object"
            raise msgspec.ValidationError(
                f"Expected `{expected}`, got `{_kind(raw)}` - at `{where}.{name}`"
            )


class RawStartedCall(_RawCall, kw_only=True, gc=False):
    """:class:`~engine.wire.calls.StartedCallSchemaForInsert` with raw JSON fields."""

    OBJECT_FIELDS = ("attributes", "inputs", "otel_dump")
    TIME_FIELDS = ("started_at",)
    INT_FIELDS = ("wb_run_step",)

    project_id: str
    id: str | None = None
    op_name: str
    display_name: str | None = None
    trace_id: str | None = None
    parent_id: str | None = None
    thread_id: str | None = None
    turn_id: str | None = None
    started_at: _dt.datetime
    attributes: msgspec.Raw
    inputs: msgspec.Raw
    otel_dump: msgspec.Raw = RAW_NULL
    wb_user_id: str | None = None
    wb_run_id: str | None = None
    wb_run_step: int | None = None

    def ok(self) -> bool:
        return (_first_byte(self.attributes) == _first_byte(self.inputs) == _OBJECT
                and _first_byte(self.otel_dump) in (_OBJECT, _NULL)
                and self.started_at.tzinfo is _UTC and self.wb_run_step is None)


class RawEndedCall(_RawCall, kw_only=True, gc=False):
    """:class:`~engine.wire.calls.EndedCallSchemaForInsert` with raw JSON fields."""

    OBJECT_FIELDS = ("summary",)
    TIME_FIELDS = ("started_at", "ended_at")
    INT_FIELDS = ("wb_run_step_end",)

    project_id: str
    id: str
    trace_id: str | None = None
    started_at: _dt.datetime | None = None
    is_eval: bool | None = None
    ended_at: _dt.datetime
    exception: str | None = None
    output: msgspec.Raw = RAW_NULL
    summary: msgspec.Raw
    wb_run_step_end: int | None = None

    def ok(self) -> bool:
        started = self.started_at
        return (_first_byte(self.summary) == _OBJECT and self.ended_at.tzinfo is _UTC
                and (started is None or started.tzinfo is _UTC)
                and self.wb_run_step_end is None)


class RawCompletedCall(_RawCall, kw_only=True, gc=False):
    """:class:`~engine.wire.calls.CompletedCallSchemaForInsert` with raw JSON fields."""

    OBJECT_FIELDS = ("attributes", "inputs", "otel_dump", "summary")
    TIME_FIELDS = ("started_at", "ended_at")
    INT_FIELDS = ("wb_run_step", "wb_run_step_end")

    project_id: str
    id: str
    op_name: str
    display_name: str | None = None
    trace_id: str
    parent_id: str | None = None
    thread_id: str | None = None
    turn_id: str | None = None
    started_at: _dt.datetime
    attributes: msgspec.Raw
    inputs: msgspec.Raw
    otel_dump: msgspec.Raw = RAW_NULL
    wb_user_id: str | None = None
    wb_run_id: str | None = None
    wb_run_step: int | None = None
    ended_at: _dt.datetime
    exception: str | None = None
    output: msgspec.Raw = RAW_NULL
    summary: msgspec.Raw
    wb_run_step_end: int | None = None

    def ok(self) -> bool:
        return (
            _first_byte(self.attributes) == _first_byte(self.inputs)
            == _first_byte(self.summary) == _OBJECT
            and _first_byte(self.otel_dump) in (_OBJECT, _NULL)
            and self.started_at.tzinfo is _UTC and self.ended_at.tzinfo is _UTC
            and self.wb_run_step is None and self.wb_run_step_end is None
        )  # fmt: skip


# The engine's own producers write these into a ring (engine ingest, the relay): with the
# C accelerator built they are encoded there in one call, the raw fields copied as they are.
for _cls in (RawStartedCall, RawEndedCall, RawCompletedCall):
    native_struct_plan(_cls)


def check_call(call: _RawCall, where: str) -> None:
    """Every check of one call, raising for the first fault (``where``: its path)."""
    raise_misfit(call, where)
    call.check_limits(where)


class _IngestReq(Request, kw_only=True):
    """A top-level ingest body; ``check_kinds`` raises for a raw field of a forbidden kind."""

    def check_kinds(self) -> None:
        raise NotImplementedError


Req = TypeVar("Req", bound=_IngestReq)


class RawCallStartReq(_IngestReq, kw_only=True):
    """Body of ``/call/start`` and ``/v2/{entity}/{project}/call/start``."""

    start: RawStartedCall

    def check_kinds(self) -> None:
        if not self.start.ok():
            check_call(self.start, "$.start")


class RawCallEndReq(_IngestReq, kw_only=True):
    """Body of ``/call/end`` and ``/v2/{entity}/{project}/call/end``."""

    end: RawEndedCall

    def check_kinds(self) -> None:
        if not self.end.ok():
            check_call(self.end, "$.end")


class RawStartBatchItem(Request, kw_only=True, tag_field="mode", tag="start"):
    req: RawCallStartReq


class RawEndBatchItem(Request, kw_only=True, tag_field="mode", tag="end"):
    req: RawCallEndReq


class RawBatch(_IngestReq, kw_only=True):
    """Body of ``POST /call/upsert_batch``."""

    batch: list[RawStartBatchItem | RawEndBatchItem]

    def check_kinds(self) -> None:
        for i, item in enumerate(self.batch):
            mode = "end" if isinstance(item, RawEndBatchItem) else "start"
            call = getattr(item.req, mode)
            if not call.ok():  # the path is formatted only for a call that needs a look
                check_call(call, f"$.batch[{i}].req.{mode}")


class RawCallsCompleteReq(_IngestReq, kw_only=True):
    """Body of ``POST /v2/{entity}/{project}/calls/complete``."""

    batch: list[RawCompletedCall]

    def check_kinds(self) -> None:
        for i, call in enumerate(self.batch):
            if not call.ok():  # the path is formatted only for a call that needs a look
                check_call(call, f"$.batch[{i}]")


def _check_utf8(body: bytes) -> None:
    if not body.isascii():  # an ASCII body is valid UTF-8, and isascii() costs less than decode()
        body.decode()


def decode_ingest(body: bytes, type_: type[Req]) -> Req:
    """Decode an ingest body, with every check the typed wire models made (but one: above)."""
    with decode_errors():
        check_json_depth(body)
        req = msgspec.json.decode(body, type=type_)
        _check_utf8(body)
        req.check_kinds()
    return req
