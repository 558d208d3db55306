"""Threads that keep the call they were started from: :class:`ThreadPoolExecutor`.

The current call lives in a context variable. asyncio tasks copy the context they are
created in, so calls traced in them nest under the call that made them; a thread of
``concurrent.futures.ThreadPoolExecutor`` starts from an empty context, so every call traced
in its tasks would begin a trace of its own (the eval loop's ``pool.map(predict, rows)``
would show no ``predict`` under ``evaluate``).
"""

from __future__ import annotations

import concurrent.futures
import contextvars
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class ThreadPoolExecutor(concurrent.futures.ThreadPoolExecutor):
    """``concurrent.futures.ThreadPoolExecutor`` whose tasks run in a copy of the context
    that submitted them: calls traced in a task nest under the call current where it was
    submitted (``map`` too: it submits)."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)
