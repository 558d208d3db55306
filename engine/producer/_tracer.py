"""The producer side: a :class:`Tracer` writes encoded call items into its own ring slot.

The hot path is: build a msgspec Struct, encode it once into its final JSON wire fragment,
copy it into this process's single-producer ring. No lock, no thread, no socket, no syscall
per item. A tracer is picklable and claims a slot lazily in whichever process first writes,
so the same object works in the owner and in fork/spawn/forkserver/Pool children.
"""

from __future__ import annotations

import contextvars
import datetime as _dt
import functools
import inspect
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from engine import ring
from engine.common._control import Control, control_path
from engine.common._errors import Closed, PayloadTooLarge, RingFull
from engine.native._accel import native as _native
from engine.wire import _codec
from engine.wire.calls import (
    CallStartRes,
    CompletedCallSchemaForInsert,
    EndedCallSchemaForInsert,
    StartedCallSchemaForInsert,
    end_splice_offset,
)

__all__ = ["Tracer", "CallHandle", "current_call"]

log = logging.getLogger("engine.producer")
_KIND_START, _KIND_END = ring.KIND_START, ring.KIND_END
_WRITTEN, _UNPLANNED = ring.WRITTEN, ring.UNPLANNED

# The items a Tracer writes are encoded by the C accelerator when it is built (msgspec's
# bytes, a good part of a call's CPU less); anything inside them it does not cover goes
# to msgspec value by value.
_planned = [_codec.native_struct_plan(_cls) for _cls in (
    StartedCallSchemaForInsert, EndedCallSchemaForInsert, CompletedCallSchemaForInsert)]
if _native is not None and all(_planned):
    # call_start / call_end of exact wire Structs then take one C call, answer included
    _native.call_types(StartedCallSchemaForInsert, EndedCallSchemaForInsert, CallStartRes)


def _dict_fields(cls: type, ids: frozenset[str]) -> tuple:
    """(name, kind, required, id) per field of ``cls`` for engine.native._native's dicts of it
    (kinds as in engine/native/_native.c), or () if a field's type is none it checks."""
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


if _native is not None and all(_planned) and hasattr(_native, "call_dict_fields"):
    # ... and so do dicts whose keys are fields and values already of their types
    _native.call_dict_fields(
        _dict_fields(StartedCallSchemaForInsert, frozenset({"id", "trace_id"})),
        _dict_fields(EndedCallSchemaForInsert, frozenset({"id"})))

F = TypeVar("F", bound=Callable[..., Any])
_ENVELOPE_BYTES = 64  # room for the batch envelope around the largest single item
_live_tracers: weakref.WeakSet[Tracer] = weakref.WeakSet()


class _ProcessSlot:
    """The ring slot this process writes into for one engine, shared by all its tracers of
    that engine: a slot is single-producer, and tracers come and go (a Pool task unpickles
    one per task; a slot each would run out after ``max_slots`` tasks). Given back when the
    last tracer that wrote through it closes, or when the process ends."""

    __slots__ = ("writer", "max_payload", "fast_put", "fast_start", "fast_end", "projects",
                 "open", "closed")

    def __init__(self, writer: ring.SlotWriter, max_payload: int, fast_put: Any,
                 fast_calls: tuple[Any, Any], projects: dict[str, bytes]) -> None:
        self.writer = writer
        self.max_payload = max_payload
        self.fast_put = fast_put
        self.fast_start, self.fast_end = fast_calls
        self.projects = projects  # project_id -> bytes, bound to the writer's fast path
        self.open = 0  # tracers using it that have not closed


def close_tracers(spec: ring.RingSpec) -> None:
    """Close every tracer of this process writing into ``spec``'s ring set, the ones
    unpickled here too (the engine closes: their later writes raise Closed)."""
    for tracer in list(_live_tracers):
        if tracer._spec == spec:
            tracer.close()


class _Process:
    """What the tracers of this process share; a fresh one in a forked child."""

    def __init__(self) -> None:
        self.slots: dict[tuple[ring.RingSpec, ProducerSettings], _ProcessSlot] = {}
        # A slot is single-producer: threads of one process take turns on the slow paths
        # (the one-call paths are atomic). A fresh lock after fork: another thread may have
        # held the old one.
        self.lock = threading.RLock()
        self.stringified_seen = _codec.Stringified.count  # what has been counted so far


_process = _Process()


class ProducerSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The part of the engine's configuration a producer needs (picklable)."""

    project: str
    max_block_ms: int
    on_full: str
    strict: bool
    max_request_bytes: int


class _PyCallHandle:
    """One traced call: ``with tracer.call(...) as call:`` — set ``output`` / ``summary``.

    It is its own context manager (one object per call on the hot path); ``id``,
    ``trace_id``, ``parent_id`` and ``started_at`` are filled when the call starts.
    """

    __slots__ = ("id", "trace_id", "parent_id", "op_name", "started_at", "output", "summary",
                 "inputs", "attributes", "display_name", "_token",
                 "_project", "_tracer")

    def __init__(self, tracer: Tracer, op_name: str, inputs: dict[str, Any],
                 attributes: dict[str, Any], display_name: str | None, project: str) -> None:
        self._tracer = tracer
        self.op_name = op_name
        self.inputs = inputs
        self.attributes = attributes
        self.display_name = display_name
        self._project = project
        self.output: Any = None
        self.summary: dict[str, Any] = {}
        self.id = self.trace_id = self.parent_id = self.started_at = None
        self._token: contextvars.Token | None = None

    def _begin(self) -> CallHandle:
        """Start the call: its ids (a child takes its parent's trace), the start time, the
        start record, and this call as the context's current one."""
        parent = _current.get()
        self.id = call_id = _codec.uuid7()  # (the C writer keeps the last ids' bytes)
        if parent is None:
            self.trace_id = trace_id = _codec.uuid7()
            self.parent_id = parent_id = None
        else:
            self.trace_id = trace_id = parent.trace_id
            self.parent_id = parent_id = parent.id
        self.started_at = started_at = _codec.utcnow()
        self._tracer.call_start(StartedCallSchemaForInsert(
            project_id=self._project, id=call_id, op_name=self.op_name,
            display_name=self.display_name, trace_id=trace_id, parent_id=parent_id,
            started_at=started_at, attributes=self.attributes, inputs=self.inputs,
        ))  # one C call where the accelerator is built
        self._token = _current.set(self)
        return self

    __enter__ = _begin  # no frame between ``with`` and the work

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        """End the call: the end record (output, summary, the exception if one ended it)."""
        if self._token is not None:
            _current.reset(self._token)
            self._token = None
        self._tracer.call_end(EndedCallSchemaForInsert(
            project_id=self._project, id=self.id, trace_id=self.trace_id,
            started_at=self.started_at, ended_at=_codec.utcnow(),
            exception=None if exc is None else _describe(exc),
            output=self.output, summary=self.summary,
        ))

    async def __aenter__(self) -> CallHandle:
        return self._begin()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.__exit__(exc_type, exc, tb)


_current: contextvars.ContextVar[CallHandle | None] = contextvars.ContextVar(
    "engine_current_call", default=None
)

if _native is not None and hasattr(_native, "CallHandleBase") and all(_planned):

    class CallHandle(_native.CallHandleBase):  # type: ignore[misc,name-defined]
        """One traced call: ``with tracer.call(...) as call:`` — set ``output`` /
        ``summary``. ``id``, ``trace_id``, ``parent_id`` and ``started_at`` are filled when
        the call starts. Started and ended in C (engine/native/_native.c), as ``_PyCallHandle``
        does it where the accelerator is not built."""

        __slots__ = ()

        async def __aenter__(self) -> CallHandle:
            return self._begin()

        async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
            self.__exit__(exc_type, exc, tb)

else:
    CallHandle = _PyCallHandle  # type: ignore[misc,assignment]


def current_call() -> CallHandle | None:
    """The innermost call traced by ``tracer.call`` / ``@tracer.op`` in this context."""
    return _current.get()


class _PyCalls:
    """Tracer.call_start / call_end: the writer's one-call path, then the Tracer's
    ``_call_start_rest`` / ``_call_end_rest`` with what it left. engine/native/_native.c's
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
        except ValueError:
            self._fast_failed(fast, self._fast_start)  # type: ignore[attr-defined]
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
        except ValueError:
            self._fast_failed(fast, self._fast_end)  # type: ignore[attr-defined]
            raise
        if done is True:
            return None
        return self._call_end_rest(end, done)  # type: ignore[attr-defined]


_CallsBase: type = getattr(_native, "TracerCalls", None) or _PyCalls


class Tracer(_CallsBase):  # type: ignore[misc,valid-type]
    """Writes calls into shared memory. Get one from :meth:`engine.Engine.producer`."""

    def __init__(self, spec: ring.RingSpec, settings: ProducerSettings) -> None:
        self._spec = spec
        self._settings = settings
        self._encoder = _codec.strict_encoder if settings.strict else _codec.encoder
        self._ringset: ring.RingSet | None = None
        self._control: Control | None = None
        self._closed = False
        self._projects: dict[str, bytes] = {}
        self._forget_slot()
        _live_tracers.add(self)

    def _forget_slot(self) -> None:
        """Drop the claimed slot: a forked child must never write into its parent's slot.

        The shared mappings stay valid in a child, so only the slot is given up; the child
        claims its own on its first write.
        """
        self._slot: _ProcessSlot | None = None
        # The writer's one-call hot path (see SlotWriter.fast_put), None until a slot is
        # claimed or where there is none. Used without the lock: each call is atomic.
        self._fast_put: Any = None
        # The same for call_start / call_end (see SlotWriter.fast_calls).
        self._fast_start: Any = None
        self._fast_end: Any = None

    @property
    def _lock(self) -> threading.RLock:
        return _process.lock

    @property
    def _writer(self) -> ring.SlotWriter | None:
        return None if self._slot is None else self._slot.writer

    @property
    def _max_payload(self) -> int:
        return 0 if self._slot is None else self._slot.max_payload

    def __reduce__(self) -> Any:
        return (Tracer, (self._spec, self._settings))

    @property
    def project(self) -> str:
        return self._settings.project

    # -- the two wire-level entry points (call_start / call_end: _CallsBase) ------------

    def _call_start_rest(self, start: Any, done: Any) -> CallStartRes:
        """call_start past the one-call path: settle what it left (``done``, its code), or,
        when it did nothing (``done`` None), the general path."""
        if done is not None:
            if type(start) is dict:  # the one-call path made its own Struct of it
                start = _convert(start, StartedCallSchemaForInsert)
            self._settle(done, _KIND_START, 0, start, start.id, start.trace_id, "start", False)
            return CallStartRes(id=start.id, trace_id=start.trace_id)
        if (type(start) is not StartedCallSchemaForInsert
                and not isinstance(start, StartedCallSchemaForInsert)):
            start = _convert(start, StartedCallSchemaForInsert)
        if start.id is None or start.trace_id is None:
            start = msgspec.structs.replace(start, id=start.id or _codec.uuid7(),
                                            trace_id=start.trace_id or _codec.uuid7())
        self._emit(_KIND_START, 0, start, start.project_id, start.id, start.trace_id, "start",
                   False)
        return CallStartRes(id=start.id, trace_id=start.trace_id)

    def _call_end_rest(self, end: Any, done: Any) -> None:
        """call_end past the one-call path, as _call_start_rest."""
        if done is not None:
            if type(end) is dict:
                end = _convert(end, EndedCallSchemaForInsert)
            flags = ring.FLAG_END_HAS_TRACE if end.trace_id and end.started_at else 0
            self._settle(done, _KIND_END, flags, end, end.id, end.trace_id or None, "end", True)
            return
        if type(end) is not EndedCallSchemaForInsert and not isinstance(end, EndedCallSchemaForInsert):
            end = _convert(end, EndedCallSchemaForInsert)
        flags = ring.FLAG_END_HAS_TRACE if end.trace_id and end.started_at else 0
        self._emit(_KIND_END, flags, end, end.project_id, end.id, end.trace_id or None, "end",
                   True)

    def call_complete(self, call: CompletedCallSchemaForInsert | dict[str, Any]) -> None:
        """Enqueue a finished call (start and end in one item, as ``calls/complete`` takes it)."""
        if not isinstance(call, CompletedCallSchemaForInsert):
            call = _convert(call, CompletedCallSchemaForInsert)
        self._emit(ring.KIND_COMPLETE, 0, call, call.project_id, call.id, call.trace_id, "call",
                   False)

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
        """Decorator: every call of ``fn`` (sync or async) becomes a traced call."""
        if fn is None:
            return functools.partial(self.op, name=name)
        return _wrap_op(self, fn, name or getattr(fn, "__qualname__", repr(fn)))

    def begin(self, op_name: str, inputs: dict[str, Any], attributes: dict[str, Any],
              display_name: str | None, project: str) -> CallHandle:
        """Start a call now (``finish`` ends it): the non-``with`` form of :meth:`call`."""
        return CallHandle(self, op_name, inputs, attributes, display_name, project)._begin()

    def finish(self, handle: CallHandle, exception: BaseException | None = None) -> None:
        """End a call :meth:`begin` started (``exception``: what ended it, if anything)."""
        handle.__exit__(None, exception, None)

    # -- lifecycle --------------------------------------------------------------------------

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until the server acknowledged everything this process enqueued so far."""
        slot = self._slot or _process.slots.get((self._spec, self._settings))
        if slot is None:  # nothing written from here
            return True
        from engine.producer._engine import wait_released

        ringset = self._ensure_attached()
        return wait_released(ringset, self._control_block(), timeout_s, slots=[slot.writer.slot])

    def close(self) -> None:
        """Give the slot back (its data is still delivered); later writes raise Closed."""
        with self._lock:
            self._closed = True
            self._fast_put = self._fast_start = self._fast_end = None
            slot, self._slot = self._slot, None
            if slot is not None:
                slot.open -= 1
                if slot.open == 0:  # the last tracer here that wrote
                    slot.writer.close()
                    key = (self._spec, self._settings)
                    if _process.slots.get(key) is slot:
                        del _process.slots[key]

    # -- internals ---------------------------------------------------------------------------

    def _fast_failed(self, fast: Any, current: Any) -> None:
        """A one-call path raised ValueError: a writer released by a close() that ran
        while the call was on its way (``current`` is then no longer ``fast``) is Closed;
        anything else stands."""
        if current is not fast:
            raise Closed("this tracer is closed") from None

    def _emit(self, kind: int, flags: int, item: msgspec.Struct, project: str,
              call_id: str | bytes, trace_id: str | bytes | None, what: str,
              splice: bool) -> None:
        """``_put`` through the writer's one-call path when there is one."""
        fast = self._fast_put
        if fast is not None:
            try:
                result = fast(item, kind, flags, splice)
            except ValueError:
                self._fast_failed(fast, self._fast_put)
                raise
            if result == _WRITTEN and _codec.Stringified.count == _process.stringified_seen:
                return
            if result != _UNPLANNED:
                self._settle(result, kind, flags, item, call_id, trace_id, what, splice)
                return
        self._put(kind, flags, item, project, call_id, trace_id, what, splice)

    def _settle(self, result: Any, kind: int, flags: int, item: msgspec.Struct,
                call_id: str | bytes, trace_id: str | bytes | None, what: str,
                splice: bool) -> None:
        """What the one-call path did not finish: the doorbell, a full ring (its bytes came
        back with the code: nothing is encoded twice), an error, the stringified count."""
        code, payload = result if type(result) is tuple else (result, None)
        try:
            if code != _WRITTEN:
                project_b = self._projects[item.project_id]  # put_item only takes bound ones
                with self._lock:
                    writer = self._writer
                    if writer is None:
                        if code != ring.WRITTEN_RING:
                            raise Closed("this tracer is closed")
                    else:
                        self._put_slow(writer, code, kind, flags, project_b, call_id, trace_id,
                                       what, splice, payload)
        finally:
            if _codec.Stringified.count != _process.stringified_seen:
                self._note_stringified()

    def _put(self, kind: int, flags: int, item: msgspec.Struct, project: str,
             call_id: str | bytes, trace_id: str | bytes | None, what: str,
             splice: bool = False) -> None:
        """Encode ``item`` once and write it into this process's slot (one C call when the
        accelerator is built). Ids are UUID text or raw bytes; ``what`` names the item in
        errors (``start`` -> ``start.id``); ``splice``: an end, whose record carries the
        offset where its payload fields begin."""
        project_b = self._projects.get(project) or self._project_bytes(project)
        try:
            with self._lock:
                writer = self._writer or self._claim()
                try:
                    code = writer.put(self._encoder, item, kind, flags, call_id, trace_id,
                                      project_b, self._max_payload, splice)
                except ValueError:
                    if self._closed:  # closed by a value's hook while it was encoded
                        raise Closed("this tracer is closed") from None
                    raise
                if code != ring.WRITTEN:
                    self._put_slow(writer, code, kind, flags, project_b, call_id, trace_id,
                                   what, splice)
        finally:
            if _codec.Stringified.count != _process.stringified_seen:
                self._note_stringified()

    def _put_slow(self, writer: ring.SlotWriter, code: int, kind: int, flags: int,
                  project_b: bytes, call_id: str | bytes, trace_id: str | bytes | None,
                  what: str, splice: bool, payload: bytes | None = None) -> None:
        """Anything but a plain write: the doorbell, a full ring, or an error to raise."""
        if payload is None:  # the bytes put encoded (None if it stopped before)
            payload = writer.take_refused()
        if code in (ring.WRITTEN_RING, ring.BAD_CALL_ID, ring.BAD_TRACE_ID):
            writer.outcome(code, project_b, b"", call_id, trace_id, what)  # rings or raises
            return
        if code == ring.OVER_MAX_PAYLOAD:
            self._control_block().slot_add(writer.slot, "too_large")
            raise PayloadTooLarge(_id_text(call_id), len(payload), self._max_payload)
        aux = end_splice_offset(payload) if splice else 0  # raises if there is no ended_at
        if not writer.outcome(code, project_b, payload, call_id, trace_id, what):
            self._write_slow(writer, (kind, flags, call_id, trace_id, project_b, payload, aux),
                             _id_text(call_id))

    def _write_slow(self, writer: ring.SlotWriter, args: tuple, call_id: str) -> None:
        """The ring is full: wait up to max_block_ms, then apply the on_full policy."""
        started = time.monotonic()
        ok = writer.write(*args, timeout_s=self._settings.max_block_ms / 1000)
        while not ok and self._settings.on_full == "block":
            log.warning("ring slot %d full for %.1f s; still waiting (the sender is behind)",
                        writer.slot, time.monotonic() - started)
            ok = writer.write(*args, timeout_s=self._settings.max_block_ms / 1000 or 1.0)
        control = self._control_block()
        control.slot_add(writer.slot, "blocked_ms", int((time.monotonic() - started) * 1000))
        if ok:
            return
        if self._settings.on_full == "raise":
            control.slot_add(writer.slot, "raised_full")
            raise RingFull(f"ring slot {writer.slot} stayed full for "
                           f"{self._settings.max_block_ms} ms; call {call_id} not enqueued")
        control.slot_add(writer.slot, "dropped_full")
        log.warning("dropped call %s item: ring full (on_full='drop')", call_id)

    def _claim(self) -> ring.SlotWriter:
        with self._lock:
            return self._writer or self._claim_locked()

    def _claim_locked(self) -> ring.SlotWriter:
        if self._closed:
            raise Closed("this tracer is closed")
        key = (self._spec, self._settings)
        slot = _process.slots.get(key)
        if slot is None:  # this process's first write into this engine
            ringset = self._ensure_attached()
            try:
                # every slot taken: the sender frees a dead producer's once it is drained
                writer = ringset.writer(wait_s=self._settings.max_block_ms / 1000)
            except Exception as exc:
                raise Closed(f"cannot claim a ring slot: {exc}") from exc
            reserved = len(self._settings.project.encode()) + 256
            max_payload = min(writer.max_record_bytes - reserved,
                              self._settings.max_request_bytes - _ENVELOPE_BYTES)
            projects = dict(self._projects)
            slot = _process.slots[key] = _ProcessSlot(
                writer, max_payload, writer.fast_put(self._encoder, max_payload, projects),
                writer.fast_calls(), projects)
        else:
            slot.projects.update(self._projects)
        slot.open += 1
        self._slot = slot
        self._projects = slot.projects
        self._fast_put, self._fast_start, self._fast_end = (
            slot.fast_put, slot.fast_start, slot.fast_end)
        return slot.writer

    def _ensure_attached(self) -> ring.RingSet:
        if self._ringset is None:
            try:
                self._ringset = ring.RingSet.attach(self._spec)
            except FileNotFoundError:
                raise Closed("the engine that owned this tracer is closed") from None
        return self._ringset

    def _control_block(self) -> Control:
        if self._control is None:
            ring_dir = os.path.dirname(self._spec.lock_path)
            self._control = Control(control_path(ring_dir), self._spec.max_slots)
        return self._control

    def _project_bytes(self, project: str) -> bytes:
        from engine.common._config import check_project

        check_project(project, "project_id")
        encoded = self._projects[project] = project.encode()
        return encoded

    def _note_stringified(self) -> None:
        delta = _codec.Stringified.count - _process.stringified_seen
        _process.stringified_seen = _codec.Stringified.count
        writer = self._writer or self._claim()
        self._control_block().slot_add(writer.slot, "stringified", delta)


def _wrap_op(tracer: Tracer, fn: Callable[..., Any], op_name: str) -> Callable[..., Any]:
    names = _positional_names(fn)
    project = tracer.project

    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def traced_async(*args: Any, **kwargs: Any) -> Any:
            handle = CallHandle(tracer, op_name, _op_inputs(names, args, kwargs), {}, None,
                                project)._begin()
            try:
                handle.output = await fn(*args, **kwargs)
            except BaseException as exc:
                handle.__exit__(None, exc, None)
                raise
            handle.__exit__(None, None, None)
            return handle.output

        return traced_async

    @functools.wraps(fn)
    def traced(*args: Any, **kwargs: Any) -> Any:
        handle = CallHandle(tracer, op_name, _op_inputs(names, args, kwargs), {}, None,
                            project)._begin()
        try:
            handle.output = fn(*args, **kwargs)
        except BaseException as exc:
            handle.__exit__(None, exc, None)
            raise
        handle.__exit__(None, None, None)
        return handle.output

    return traced


def _positional_names(fn: Callable[..., Any]) -> tuple[str, ...]:
    code = getattr(fn, "__code__", None)
    if code is None:
        return ()
    return code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]


def _op_inputs(names: tuple[str, ...], args: tuple, kwargs: dict) -> dict[str, Any]:
    """An op call's inputs: its arguments by parameter name."""
    inputs = dict(zip(names, args)) if len(args) <= len(names) else _spill(names, args)
    if kwargs:
        inputs.update(kwargs)
    return inputs


def _spill(names: tuple[str, ...], args: tuple) -> dict[str, Any]:
    inputs = dict(zip(names, args))
    inputs["args"] = list(args[len(names):])
    return inputs


def _id_text(call_id: str | bytes) -> str:
    return call_id if isinstance(call_id, str) else _codec.uuid_text(call_id)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _convert(value: Any, type_: type) -> Any:
    try:
        return msgspec.convert(value, type_, strict=False)
    except msgspec.ValidationError as exc:
        raise ValueError(f"invalid {type_.__name__}: {exc}") from None


def _after_fork_in_child() -> None:
    global _process
    _process = _Process()  # the parent's slots are not this process's
    for tracer in list(_live_tracers):
        tracer._forget_slot()


os.register_at_fork(after_in_child=_after_fork_in_child)
if CallHandle is not _PyCallHandle:
    _native.call_handle_setup(_current, _describe)  # what the C handle calls back
