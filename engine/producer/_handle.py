"""The call handle: one traced call, its own context manager (``tracer.call``, ``@tracer.op``).

In C (``engine.native._native.CallHandleBase``) where the accelerator is built: ids, start
time, context variable and both records without a Python frame; ``_PyCallHandle`` otherwise.
"""

from __future__ import annotations

import contextvars
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.common._errors import Closed
from engine.native._accel import native as _native
from engine.producer._calls import ITEMS_PLANNED
from engine.producer._safe import write_safely
from engine.wire import _codec
from engine.wire.calls import EndedCallSchemaForInsert, StartedCallSchemaForInsert

if TYPE_CHECKING:
    from engine.producer._tracer import Tracer

__all__ = ["CallHandle", "current_call"]


class _PyCallHandle:
    """One traced call: ``with tracer.call(...) as call:`` — set ``output`` / ``summary``.

    It is its own context manager (one object per call on the hot path); ``id``,
    ``trace_id``, ``parent_id`` and ``started_at`` are filled when the call starts (``id``
    is None again if the call could not be traced: logged, never raised).
    """

    __slots__ = ("id", "trace_id", "parent_id", "op_name", "started_at", "output", "_summary",
                 "inputs", "attributes", "display_name", "_token",
                 "_project", "_tracer")

    def __init__(self, tracer: Tracer, op_name: str, inputs: dict[str, Any],
                 attributes: dict[str, Any], display_name: str | None, project: str) -> None:
        check_call_arguments(op_name, inputs, attributes, display_name, project)
        self._tracer = tracer
        self.op_name = op_name
        self.inputs = inputs
        self.attributes = attributes
        self.display_name = display_name
        self._project = project
        self.output: Any = None
        self._summary: dict[str, Any] = {}
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
        start = StartedCallSchemaForInsert(
            project_id=self._project, id=call_id, op_name=self.op_name,
            display_name=self.display_name, trace_id=trace_id, parent_id=parent_id,
            started_at=started_at, attributes=self.attributes, inputs=self.inputs,
        )
        with _writing:  # written and in the open calls as one step (writes_in_flight)
            try:
                self._tracer.call_start(start)  # one C call where the accelerator is built
            except Exception as exc:
                if not write_safely(self._tracer, start, "start", exc):
                    self.id = None  # not started: nothing ends it
            if self.id is not None:
                _open[self] = None
        self._token = _current.set(self)
        return self

    __enter__ = _begin  # no frame between ``with`` and the work

    @property
    def summary(self) -> dict[str, Any]:
        return self._summary

    @summary.setter
    def summary(self, value: dict[str, Any]) -> None:
        if not isinstance(value, dict):
            raise TypeError(f"call.summary must be a dict, not {type(value).__name__}")
        self._summary = value

    @summary.deleter
    def summary(self) -> None:
        raise AttributeError("call.summary cannot be deleted: set it to {}")

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        """End the call: the end record (output, summary, the exception if one ended it)."""
        if self._token is not None:
            _current.reset(self._token)
            self._token = None
        if self.id is None:  # its start was dropped (logged): no end without a start
            return
        end = EndedCallSchemaForInsert(
            project_id=self._project, id=self.id, trace_id=self.trace_id,
            started_at=self.started_at, ended_at=_codec.utcnow(),
            exception=None if exc is None else _describe(exc),
            output=self.output, summary=self.summary,
        )
        with _writing:  # taken from the open calls and written as one step
            if _open.pop(self, _GONE) is _GONE:  # the engine's close ended it (or a 2nd exit)
                return
            try:
                self._tracer.call_end(end)
            except Exception as error:
                write_safely(self._tracer, end, "end", error)

    async def __aenter__(self) -> CallHandle:
        return self._begin()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.__exit__(exc_type, exc, tb)


_current: contextvars.ContextVar[CallHandle | None] = contextvars.ContextVar(
    "engine_current_call", default=None
)
# The calls of this process a handle started and has not ended (handle -> None, in the order
# they started; the C handle keeps it too): the engine's close ends those of its tracers
# with its reason (``end_open_calls``), else a thread still in one as the program exits, or
# the call a SIGTERM interrupted, stays open on the server for good. Whoever pops a handle
# writes its end: the close, or the handle's own __exit__, never both. A forked child
# starts with none: its parent's calls are its parent's to end.
_open: dict[Any, None] = {}
_GONE = object()


class WritesInFlight:
    """Counts the starts and ends being written: a start until its call is among the open
    calls, an end from taking its call out of them until written. A context manager around
    each; ``cut()`` marks the writes begun so far and returns how many of them other
    threads are still writing (a function: the engine's close waits for those, not for
    writes begun after it, which would never end while threads go on tracing). This
    thread's count goes up first and down last (a signal handler's close in between does
    not wait for it). A fresh count in a forked child."""

    def __init__(self) -> None:
        # (re-entrant: a signal handler's close may cut() inside this thread's __enter__)
        self.lock = threading.RLock()
        self.count = [0, 0]  # by the epoch they began in
        self.epoch = 0
        self.mine = threading.local()  # this thread's: counts, and its writes' epochs
        os.register_at_fork(after_in_child=self._after_fork_in_child)

    def _own(self) -> Any:
        mine = self.mine
        if not hasattr(mine, "count"):
            mine.count, mine.epochs = [0, 0], []
        return mine

    def __enter__(self) -> None:
        mine = self._own()
        with self.lock:  # the epoch read and counted in one step: a cut() sees it
            epoch = self.epoch
            mine.count[epoch] += 1
            mine.epochs.append(epoch)
            self.count[epoch] += 1

    def __exit__(self, *exc: Any) -> None:
        mine = self._own()
        epoch = mine.epochs[-1]
        with self.lock:
            self.count[epoch] -= 1
        mine.epochs.pop()
        mine.count[epoch] -= 1

    def cut(self) -> Callable[[], int]:
        with self.lock:
            epoch, self.epoch = self.epoch, self.epoch ^ 1
        return lambda: self.count[epoch] - self._own().count[epoch]

    def _after_fork_in_child(self) -> None:
        self.lock, self.count = threading.RLock(), [0, 0]  # the parent's threads are not here
        self.mine.count, self.mine.epochs = [0, 0], []


_writing = WritesInFlight()  # the pure-Python handles'
os.register_at_fork(after_in_child=_open.clear)


def writes_cut() -> Callable[[], int]:
    """Marks the starts and ends the handles of this process have begun so far; returns
    how many of those other threads are still writing (a start whose call is not yet in
    the open calls, an end whose call was taken out of them). The engine's close waits for
    none before it ends the calls left open and stops taking ends, else such a call would
    be missed, or its end refused. Not this thread's: a SIGTERM handler's close runs on top
    of the write it interrupted."""
    python_left = _writing.cut()
    if CallHandle is _PyCallHandle:
        return python_left
    epoch = _native.writes_cut()
    return lambda: python_left() + _native.writes_before(epoch)


if _native is not None and hasattr(_native, "CallHandleBase") and ITEMS_PLANNED:

    class CallHandle(_native.CallHandleBase):  # type: ignore[misc,name-defined]
        """One traced call: ``with tracer.call(...) as call:`` — set ``output`` /
        ``summary``. ``id``, ``trace_id``, ``parent_id`` and ``started_at`` are filled when
        the call starts. Started and ended in C (engine/native/_calls.c), as ``_PyCallHandle``
        does it where the accelerator is not built."""

        __slots__ = ()

        async def __aenter__(self) -> CallHandle:
            return self._begin()

        async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
            self.__exit__(exc_type, exc, tb)

else:
    CallHandle = _PyCallHandle  # type: ignore[misc,assignment]


def check_call_arguments(op_name: Any, inputs: Any, attributes: Any, display_name: Any,
                         project: Any) -> None:
    """Raise :class:`TypeError` naming a wrong-typed ``tracer.call`` argument: the Python
    handle's check, and Ray's task calls' (the C handle makes the same one)."""
    if not (isinstance(op_name, str) and isinstance(inputs, dict)
            and isinstance(attributes, dict) and isinstance(project, str)
            and (display_name is None or isinstance(display_name, str))):
        raise _wrong_type(op_name, inputs, attributes, display_name, project)


def _wrong_type(op_name: Any, inputs: Any, attributes: Any, display_name: Any,
                project: Any) -> TypeError:
    """The error for a wrong-typed argument of ``tracer.call``: the caller's mistake, raised
    where it is made (written, the call would be refused by the server, 422, and
    dead-lettered for good). The C handle's messages are the same (engine/native/_calls.c)."""
    checks = (("op_name", op_name, str, "a str"),
              ("inputs", inputs, dict, "a dict of argument name to value"),
              ("attributes", attributes, dict, "a dict"),
              ("display_name", display_name, (str, type(None)), "a str or None"),
              ("project", project, str, "a str"))
    name, value, wanted = next((name, value, wanted) for name, value, type_, wanted in checks
                               if not isinstance(value, type_))
    return TypeError(f"tracer.call: {name} must be {wanted}, not {type(value).__name__}")


def current_call() -> CallHandle | None:
    """The innermost call traced by ``tracer.call`` / ``@tracer.op`` in this context."""
    return _current.get()


def _describe(exc: BaseException) -> str:
    """The end's ``exception`` text; never raises (the user's exception is re-raised as
    it is, whatever its ``__str__`` does)."""
    try:
        text = str(exc)
    except Exception as broken:
        text = f"<exception text unavailable: {type(broken).__name__}>"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def end_open_calls(spec: Any, exception: str) -> int:
    """The engine writing into ``spec`` closes: end each call a handle of this process
    started through it and has not ended, its ``exception`` saying why (the process got
    SIGTERM, the program exited, the engine was closed: the call's own end would never be
    written), its ``output`` what the handle holds. Called by ``close_tracers`` once the
    tracers are closed (no call starts any more); they still take a call's end then, and
    one that meets a full ring is kept for the close to write. Returns how many it ended;
    the handle's own later ``__exit__`` writes nothing."""
    ended = 0
    for handle in list(_open):
        tracer = handle._tracer
        if getattr(tracer, "_spec", None) != spec or _open.pop(handle, _GONE) is _GONE:
            continue  # another engine's, or its thread ended it
        ended += write_end_at_close(tracer, EndedCallSchemaForInsert(
            project_id=handle._project, id=handle.id, trace_id=handle.trace_id,
            started_at=handle.started_at, ended_at=_codec.utcnow(), exception=exception,
            output=handle.output, summary=handle.summary))
    return ended


def write_end_at_close(tracer: Any, end: Any) -> bool:
    """The end the engine's close writes for a call left open (``end_open_calls``, the
    weave integration's): True if written, or kept for the close to write once its sender
    made room (a full ring); else dropped, said (``write_safely``)."""
    try:
        tracer.call_end(end)
    except Closed:  # a full ring: kept (the tracers are closed: it waits for no room)
        return True
    except Exception as error:
        return write_safely(tracer, end, "end", error)
    return True


if CallHandle is not _PyCallHandle:
    _native.call_handle_setup(_current, _describe, write_safely, _open)  # the C handle's
