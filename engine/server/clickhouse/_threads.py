"""The store's threads: a fixed pool of daemon threads that runs its statements.

A ClickHouse server that accepts connections but never answers (stopped, wedged, a
network that drops the answers) holds a statement's thread for up to the client's read
timeout: minutes, as a large insert may legitimately take that long. ThreadPoolExecutor's
threads are joined by its ``shutdown(wait=True)`` and by the interpreter's exit, so one
hung statement held ``engine serve``'s stop for those minutes. Here :meth:`shutdown` waits
at most the time it is given and the interpreter's exit waits for none: a statement still
running is abandoned (ClickHouse finishes or drops it on its side; an insert lands whole
or not at all, and its client was told nothing, so it sends it again).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

_Work = tuple[Future, Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class DaemonThreads(Executor):
    """``threads`` daemon threads taking submitted calls in order."""

    def __init__(self, threads: int, name: str) -> None:
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._closed = False
        self._threads = [threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True)
                         for i in range(threads)]  # fmt: skip
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        if self._closed:
            raise RuntimeError("the store's threads are shut down")
        future: Future = Future()
        self._work.put((future, fn, args, kwargs))
        return future

    def _serve(self) -> None:
        while (work := self._work.get()) is not None:
            future, fn, args, kwargs = work
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to whoever awaits it
                future.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False,
                 wait_s: float | None = None) -> int:  # fmt: skip
        """Stop taking work, cancel what has not started, wait for what runs up to
        ``wait_s`` (None: as long as it takes; ``wait=False``: not at all); returns how
        many threads are still running a call."""
        self._closed = True
        while cancel_futures:
            try:
                work = self._work.get_nowait()
            except queue.Empty:
                break
            if work is not None:
                work[0].cancel()
        for _ in self._threads:
            self._work.put(None)
        wait_s = wait_s if wait else 0.0
        deadline = None if wait_s is None else time.monotonic() + wait_s
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return sum(thread.is_alive() for thread in self._threads)
