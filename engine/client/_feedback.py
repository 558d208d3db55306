"""Batched feedback: ``/feedback/batch/create`` with client-made ids, and its 404 fallback.

:func:`feedback_create_batch` is the plan: one batch request; a server without the batch
route (404) gets one ``/feedback/create`` per item, each carrying its client id, so the
ids handed out before sending are the stored ones either way.

:class:`FeedbackBatcher` is the ``should_batch=True`` path of ``feedback_create``: items
are queued and sent from one background thread in batches of up to ``max_items``, after
at most ``linger_ms``. It is fork-aware: a forked child starts with an empty queue and
its own thread (the parent still sends what it queued).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable

from engine.client._core import ClientCore, Plan
from engine.wire.feedback import (
    FeedbackCreateBatchRes,
    FeedbackCreateReq,
    FeedbackCreateRes,
    feedback_batch,
)

__all__ = ["FeedbackBatcher", "feedback_create_batch"]

log = logging.getLogger("engine.client")


def feedback_create_batch(core: ClientCore,
                          items: list[FeedbackCreateReq]) -> Plan[list[FeedbackCreateRes]]:
    batch = feedback_batch(items)
    request = core.json_request("feedback_create_batch", batch)
    response = yield request
    if response.status != 404:
        core.check(request, response)
        return core.decode(FeedbackCreateBatchRes, response.body, "feedback_create_batch").res
    results = []
    for item in batch.batch:
        results.append((yield from core.call("feedback_create", item)))
    return results


class FeedbackBatcher:
    """Queues feedback creates and sends them in batches from one daemon thread."""

    def __init__(self, send: Callable[[list[FeedbackCreateReq]], object], *,
                 max_items: int = 100, linger_ms: float = 100.0) -> None:
        self._send = send
        self._max_items = max_items
        self._linger_s = linger_ms / 1000
        self._cond = threading.Condition()
        self._reset()
        atexit.register(self.flush, 10.0)

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._pending: list[FeedbackCreateReq] = []
        self._sending = 0
        self._flush_wanted = False
        self._thread: threading.Thread | None = None
        self.sent_items = 0
        self.failed_items = 0

    def submit(self, item: FeedbackCreateReq) -> None:
        with self._cond:
            if os.getpid() != self._pid:
                self._reset()
            self._pending.append(item)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="engine-feedback",
                                                daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def flush(self, timeout_s: float = 30.0) -> bool:
        """True once every queued item was sent (or failed and was logged) within ``timeout_s``."""
        with self._cond:
            if os.getpid() != self._pid:
                self._reset()
            self._flush_wanted = True
            self._cond.notify_all()
            done = self._cond.wait_for(lambda: not self._pending and not self._sending, timeout_s)
            self._flush_wanted = False
            return done

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"pending": len(self._pending) + self._sending, "sent": self.sent_items,
                    "failed": self.failed_items}

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            try:
                self._send(batch)
                outcome = "sent_items"
            except Exception as exc:  # the thread must survive a failed batch
                log.error("feedback batch of %d items not delivered: %s", len(batch), exc)
                outcome = "failed_items"
            with self._cond:
                setattr(self, outcome, getattr(self, outcome) + len(batch))
                self._sending = 0
                self._cond.notify_all()

    def _next_batch(self) -> list[FeedbackCreateReq]:
        with self._cond:
            self._cond.wait_for(lambda: self._pending)
            linger_until = time.monotonic() + self._linger_s
            self._cond.wait_for(lambda: self._flush_wanted
                                or len(self._pending) >= self._max_items,
                                max(0.0, linger_until - time.monotonic()))
            batch = self._pending[: self._max_items]
            del self._pending[: self._max_items]
            self._sending = len(batch)
            return batch
