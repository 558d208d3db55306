"""How ``Tracer.call_start`` / ``call_end`` reach the ring: the writer's one-call path first.

The items a Tracer writes are registered here with the C accelerator when it is built, so
that ``call_start`` / ``call_end`` of an exact wire Struct (or a dict of one) is one C call,
answer included; ``_PyCalls`` is the same dispatch in Python where ``TracerCalls`` is not.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

import msgspec

from engine.native._accel import native as _native
from engine.wire import _codec
from engine.wire.calls import (
    CallStartRes,
    CompletedCallSchemaForInsert,
    EndedCallSchemaForInsert,
    StartedCallSchemaForInsert,
)

# The items a Tracer writes are encoded by the C accelerator when it is built (msgspec's
# bytes, a good part of a call's CPU less); anything inside them it does not cover goes
# to msgspec value by value.
ITEMS_PLANNED = all([_codec.native_struct_plan(_cls) for _cls in (  # each one registered
    StartedCallSchemaForInsert, EndedCallSchemaForInsert, CompletedCallSchemaForInsert)])
if _native is not None and ITEMS_PLANNED:
    # call_start / call_end of exact wire Structs then take one C call, answer included
    _native.call_types(StartedCallSchemaForInsert, EndedCallSchemaForInsert, CallStartRes)


def _dict_fields(cls: type, ids: frozenset[str]) -> tuple:
    """(name, kind, required, id) per field of ``cls`` for engine.native._native's dicts of it
    (kinds as in engine/native/_call_items.c), or () if a field's type is none it checks."""
    kinds: dict[Any, int] = {Any: 0, str: 1, str | None: 2, _dt.datetime: 3,
                             _dt.datetime | None: 4, dict[str, Any]: 5,
                             dict[str, Any] | None: 6, int | None: 7, bool | None: 8}
    spec = []
    for f in msgspec.structs.fields(cls):
        kind = kinds.get(f.type)
        if kind is None:
            return ()
        spec.append((f.name, kind, f.required, f.name in ids))
    return tuple(spec)


if _native is not None and ITEMS_PLANNED and hasattr(_native, "call_dict_fields"):
    # ... and so do dicts whose keys are fields and values already of their types
    _native.call_dict_fields(
        _dict_fields(StartedCallSchemaForInsert, frozenset({"id", "trace_id"})),
        _dict_fields(EndedCallSchemaForInsert, frozenset({"id"})))


class _PyCalls:
    """Tracer.call_start / call_end: the writer's one-call path, then the Tracer's
    ``_call_start_rest`` / ``_call_end_rest`` with what it left. engine/native/_calls.c's
    TracerCalls does the same without a Python frame and is the base where it is built."""

    _fast_start: Any
    _fast_end: Any

    def call_start(self, start: StartedCallSchemaForInsert | dict[str, Any]) -> CallStartRes:
        """Enqueue a call start; a missing ``id`` / ``trace_id`` is made here (the caller's
        Struct is not changed). Returns both ids, as the server's answer would."""
        fast = self._fast_start
        if fast is None:
            return self._call_start_rest(start, None)  # type: ignore[attr-defined]
        try:  # one C call for a Struct with its ids: written, or settled in _call_start_rest
            done = fast(start)
        except Exception as exc:
            self._fast_failed(fast, self._fast_start, exc, start)  # type: ignore[attr-defined]
            raise
        if done.__class__ is CallStartRes:
            return done
        return self._call_start_rest(start, done)  # type: ignore[attr-defined]

    def call_end(self, end: EndedCallSchemaForInsert | dict[str, Any]) -> None:
        """Enqueue a call end (its start may come before or after, in any process)."""
        fast = self._fast_end
        if fast is None:
            return self._call_end_rest(end, None)  # type: ignore[attr-defined]
        try:  # as in call_start
            done = fast(end)
        except Exception as exc:
            self._fast_failed(fast, self._fast_end, exc, end, True)  # type: ignore[attr-defined]
            raise
        if done is True:
            return None
        return self._call_end_rest(end, done)  # type: ignore[attr-defined]


CallsBase: type = getattr(_native, "TracerCalls", None) or _PyCalls
