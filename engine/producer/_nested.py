"""Calls that nest across processes: :func:`nested`.

The current call lives in a context variable of one process. A ``multiprocessing`` Pool
worker (or a ``ProcessPoolExecutor``'s) runs its tasks outside it, so the calls a task
traces start traces of their own. ``pool.map(engine.nested(predict), rows)`` inside
``evaluate`` carries evaluate's ids with the task: in the worker, ``predict`` runs with
evaluate as its parent, in whatever process and with whatever start method.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from engine.producer._handle import _current, current_call

__all__ = ["ParentCall", "current_parent", "nested"]


class ParentCall(msgspec.Struct, frozen=True):
    """A call of another process (or thread) that calls traced here nest under: all a
    child needs of its parent is its ``id`` and ``trace_id``. It is the current call while
    a :func:`nested` callable runs, until a call of this process starts (the Ray
    integration carries one to each task: ``engine.integrations.ray.RemoteParent``)."""

    id: str
    trace_id: str


def current_parent() -> ParentCall | None:
    """The current call as a :class:`ParentCall` to hand to other processes; None without
    one (or when it could not be traced)."""
    here = current_call()
    if here is None or here.id is None:
        return None
    return ParentCall(str(here.id), str(here.trace_id))


class _Nested:
    """``fn`` to be run under ``parent``; picklable when ``fn`` is."""

    __slots__ = ("fn", "parent", "__wrapped__")

    def __init__(self, fn: Callable[..., Any], parent: ParentCall | None) -> None:
        self.fn = fn
        self.parent = parent
        self.__wrapped__ = fn

    def __reduce__(self) -> Any:
        return (_Nested, (self.fn, self.parent))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.parent is None:
            return self.fn(*args, **kwargs)
        token = _current.set(self.parent)
        try:
            return self.fn(*args, **kwargs)
        finally:
            _current.reset(token)


def nested(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, to run with the call current here as its parent wherever it runs: hand it to
    a process pool (``pool.map(engine.nested(predict), rows)``). Without a current call
    (or a call that could not be traced) ``fn`` runs as it is."""
    return _Nested(fn, current_parent())
