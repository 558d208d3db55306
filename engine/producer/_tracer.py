"""The producer side: a :class:`Tracer` writes encoded call items into its own ring slot.

The hot path is: build a msgspec Struct, encode it once into its final JSON wire fragment,
copy it into this process's single-producer ring. No lock, no thread, no socket, no syscall
per item. A tracer is picklable and claims a slot lazily in whichever process first writes,
so the same object works in the owner and in fork/spawn/forkserver/Pool children.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import msgspec

from engine import ring
from engine.common._errors import EncodeError
from engine.producer._flush import unacknowledged, wait_released, wait_settled
from engine.producer._handle import CallHandle, current_call
from engine.producer._ops import wrap_op
from engine.producer._sanitise import time_problem
from engine.producer._slot import SlotWriting, is_invalid_input
from engine.wire import _codec
from engine.wire.calls import (
    CallStartRes,
    CompletedCallSchemaForInsert,
    EndedCallSchemaForInsert,
    StartedCallSchemaForInsert,
)

__all__ = ["Tracer", "CallHandle", "current_call"]

_KIND_START, _KIND_END = ring.KIND_START, ring.KIND_END
F = TypeVar("F", bound=Callable[..., Any])


class Tracer(SlotWriting):
    """Writes calls into shared memory. Get one from :meth:`engine.Engine.producer`."""

    def __reduce__(self) -> Any:
        return (Tracer, (self._spec, self._settings))

    @property
    def project(self) -> str:
        return self._settings.project

    # -- the two wire-level entry points (call_start / call_end: CallsBase) ------------

    def _call_start_rest(self, start: Any, done: Any) -> CallStartRes:
        """call_start past the one-call path: settle what it left (``done``, its code), or,
        when it did nothing (``done`` None), the general path."""
        try:
            if done is not None:
                if type(start) is dict:  # the one-call path made its own Struct of it
                    start = _convert(start, StartedCallSchemaForInsert)
                self._settle(done, _KIND_START, 0, start, start.id, start.trace_id, "start",
                             False)
                return CallStartRes(id=start.id, trace_id=start.trace_id)
            if (type(start) is not StartedCallSchemaForInsert
                    and not isinstance(start, StartedCallSchemaForInsert)):
                start = _convert(start, StartedCallSchemaForInsert)
            if start.id is None or start.trace_id is None:
                start = msgspec.structs.replace(start, id=start.id or _codec.uuid7(),
                                                trace_id=start.trace_id or _codec.uuid7())
            _check_times(start)
            self._emit(_KIND_START, 0, start, start.project_id, start.id, start.trace_id,
                       "start", False)
        except Exception as exc:
            self._raise_translated(exc, start, "start")
        return CallStartRes(id=start.id, trace_id=start.trace_id)

    def _call_end_rest(self, end: Any, done: Any) -> None:
        """call_end past the one-call path, as _call_start_rest."""
        try:
            if done is not None:
                if type(end) is dict:
                    end = _convert(end, EndedCallSchemaForInsert)
                flags = ring.FLAG_END_HAS_TRACE if end.trace_id and end.started_at else 0
                self._settle(done, _KIND_END, flags, end, end.id, end.trace_id or None, "end",
                             True)
                return
            if (type(end) is not EndedCallSchemaForInsert
                    and not isinstance(end, EndedCallSchemaForInsert)):
                end = _convert(end, EndedCallSchemaForInsert)
            _check_times(end)
            flags = ring.FLAG_END_HAS_TRACE if end.trace_id and end.started_at else 0
            self._emit(_KIND_END, flags, end, end.project_id, end.id, end.trace_id or None,
                       "end", True)
        except Exception as exc:
            self._raise_translated(exc, end, "end")

    def call_complete(self, call: CompletedCallSchemaForInsert | dict[str, Any]) -> None:
        """Enqueue a finished call (start and end in one item, as ``calls/complete`` takes it)."""
        try:
            if not isinstance(call, CompletedCallSchemaForInsert):
                call = _convert(call, CompletedCallSchemaForInsert)
            _check_times(call)
            self._emit(ring.KIND_COMPLETE, 0, call, call.project_id, call.id, call.trace_id,
                       "call", False)
        except Exception as exc:
            self._raise_translated(exc, call, "call")

    def _raise_translated(self, error: Exception, item: Any, what: str) -> NoReturn:
        """What the general path raises for ``error``: an EncodeError naming the field when
        the item was at fault (nothing of it was written), else ``error`` itself, its own
        cause kept."""
        if is_invalid_input(error):
            raise self._invalid(item, error, what) from error
        raise error

    def enqueue(self, mode: str, item: Any) -> None:
        """Enqueue a call start, end or complete call (``mode``) given as a Struct with the
        wire schema's fields in the wire's order, ids set (an end's ``trace_id`` may be
        None): the raw ingest models of ``engine.server``, whose JSON-valued fields are the
        client's own bytes, so that ``engine ingest`` and the relay pass on what they read
        without building it into Python objects and encoding it again."""
        if mode == "end":
            flags = ring.FLAG_END_HAS_TRACE if item.trace_id and item.started_at else 0
            self._emit(_KIND_END, flags, item, item.project_id, item.id, item.trace_id or None,
                       "end", True)
        elif mode == "start":
            self._emit(_KIND_START, 0, item, item.project_id, item.id, item.trace_id, "start",
                       False)
        else:
            self._emit(ring.KIND_COMPLETE, 0, item, item.project_id, item.id, item.trace_id,
                       "call", False)

    # -- the ergonomic layer ---------------------------------------------------------------

    def call(self, op_name: str, inputs: dict[str, Any] | None = None, *,
             attributes: dict[str, Any] | None = None, display_name: str | None = None,
             project: str | None = None) -> CallHandle:
        """Context manager tracing one call: ``with tracer.call("predict", inputs={...}) as c:``.

        Ids, trace and parent come from the enclosing traced call (contextvars: nesting and
        asyncio tasks work); timestamps are UTC. Set ``c.output`` (and ``c.summary``) inside;
        an exception is recorded and re-raised.
        """
        return CallHandle(self, op_name, inputs or {}, attributes or {}, display_name,
                          project or self._settings.project)

    def op(self, fn: F | None = None, *, name: str | None = None) -> Any:
        """Decorator: every call of ``fn`` (sync or async, a generator, a method; above
        ``@classmethod`` / ``@staticmethod`` too) becomes a traced call."""
        if fn is None:
            return functools.partial(self.op, name=name)
        return wrap_op(self, fn, name or getattr(fn, "__qualname__", repr(fn)))

    def begin(self, op_name: str, inputs: dict[str, Any], attributes: dict[str, Any],
              display_name: str | None, project: str) -> CallHandle:
        """Start a call now (``finish`` ends it): the non-``with`` form of :meth:`call`."""
        return CallHandle(self, op_name, inputs, attributes, display_name, project)._begin()

    def finish(self, handle: CallHandle, exception: BaseException | None = None) -> None:
        """End a call :meth:`begin` started (``exception``: what ended it, if anything)."""
        handle.__exit__(None, exception, None)

    # -- lifecycle --------------------------------------------------------------------------

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until everything this process enqueued so far is settled; True only if the
        server acknowledged it. False after ``timeout_s``, or when the sender spooled or
        dead-lettered anything (this process's or another's: the counters are shared)
        during the wait or since this tracer's previous flush."""
        slot = self._written_slot()
        if slot is None:  # nothing written from here
            return True
        ringset, control = self._ensure_attached(), self._control_block()
        mark = getattr(self, "_unacked_mark", None)
        released = wait_released(ringset, control, timeout_s, slots=[slot.writer.slot],
                                 since=mark)
        self._unacked_mark = unacknowledged(control)
        return released

    def settle(self, timeout_s: float = 30.0) -> bool:
        """Wait until everything this process enqueued so far is released: acknowledged by
        the server, spooled or dead-lettered (the engine's stats say which); False only if
        ``timeout_s`` passed first. For a loader that goes on past what the server refused
        (it is on disk, for ``engine replay``) but must not go on past what is unsettled."""
        slot = self._written_slot()
        if slot is None:
            return True
        return wait_settled(self._ensure_attached(), self._control_block(), timeout_s,
                            slots=[slot.writer.slot])

    def close(self) -> None:
        """Give the slot back (its data is still delivered); later writes raise Closed."""
        self._close_slot()


def _convert(value: Any, type_: type) -> Any:
    try:
        return msgspec.convert(value, type_, strict=False)
    except msgspec.ValidationError as exc:
        raise ValueError(f"invalid {type_.__name__}: {exc}") from None


def _check_times(item: Any) -> None:
    """Timestamps must be aware and exist in UTC (the tracer's own are UTC: a cheap check)."""
    problem = time_problem(item)
    if problem is not None:
        raise EncodeError(f"{type(item).__name__} {item.id}: {problem}", field=problem.path,
                          reason=problem.reason)

