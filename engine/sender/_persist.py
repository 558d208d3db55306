"""Where a batch goes when the server will not have it: the spool, else the dead letters,
else -- when neither file can be written (a full disk, a path that cannot be created) --
nowhere: it stays *parked* in memory with its ring space held, and is tried again.

Nothing is released before it is on disk, so a batch that cannot be persisted is never
lost: at exit it is still in the ring set, which is kept for the next engine or ``engine
replay`` to recover (:mod:`engine.ring._orphans`). Each path and OS error is logged once,
with its path; the items are counted by reason (``unpersisted_no_space``,
``unpersisted_unwritable``).
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from typing import Any

from engine.common._control import Control
from engine.common._errors import EngineError
from engine.sender._batcher import Batch
from engine.sender._deadletter import DeadLetters
from engine.wire._codec import uuid_text

log = logging.getLogger("engine.sender")

_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
RETRY_PARKED_S = 1.0
DEAD_COUNTERS = {
    "too_large": "dead_too_large",
    "invalid": "dead_invalid",
    "http": "dead_http",
    "deadline": "dead_deadline",
    "shutdown": "dead_shutdown",
}


def unpersisted_reason(exc: OSError) -> str:
    """The stats counter an OS error files its items under."""
    return "unpersisted_no_space" if exc.errno in _NO_SPACE else "unpersisted_unwritable"


class Persister:
    """Spools or dead-letters batches; parks those it cannot write anywhere.

    ``release(batch)`` is called once a batch is on disk (its ring space may go).
    """

    def __init__(self, control: Control, dead: DeadLetters, spool: Any | None,
                 release: Callable[[Batch], None]) -> None:
        self.control = control
        self.dead = dead
        self.spool = spool
        self.release = release
        self.parked: list[tuple[Batch, str, int | None, str]] = []
        self._reported: set[tuple[str, int | None]] = set()
        self._next_retry_s = 0.0

    def give_up(self, batch: Batch, reason: str, status: int | None, detail: str) -> None:
        """A batch past its deadline or closing: spool it if we can, else dead-letter it."""
        if self.spool is not None:
            try:
                self.spool.put(batch.route, batch.body(), len(batch))
            except (OSError, EngineError) as exc:  # full or unwritable: the dead letters keep it
                self._report(str(self.spool.directory), exc, "the dead letters take them")
                detail = f"{detail}; spool refused it: {exc}"
            else:
                self.control.add("spooled_batches")
                self.control.add("spooled_items", len(batch))
                self.release(batch)
                return
        self.dead_letter(batch, reason, status, detail)

    def dead_letter(self, batch: Batch, reason: str, status: int | None, detail: str,
                    *, parked: bool = False) -> bool:
        """Write the batch's items to the dead letters; True once written. If they cannot
        be, the batch is parked (counted the first time)."""
        try:
            self.dead.add_batch(
                reason=f"{reason}: {detail}" if detail else reason, status=status,
                route=batch.route,
                items=[(_call_id_text(call_id), item.project.decode(), data)
                       for item in batch.items for call_id, data in item.each_call()])
        except OSError as exc:
            self._report(str(self.dead.path), exc, "they stay in shared memory until it can "
                         "be written (and at exit, for recovery)")
            if not parked:
                self.control.add(unpersisted_reason(exc), len(batch))
                self.parked.append((batch, reason, status, detail))
                self.control.add("parked_items", len(batch))
            return False
        # at shutdown the exit line counts them, and where they went: one line, not one a batch
        log.log(logging.INFO if reason == "shutdown" else logging.ERROR,
                "dead-lettered %d items (%s%s): %s", len(batch), reason,
                "" if status is None else f", HTTP {status}", detail)
        self.control.add("dead_letters", len(batch))
        self.control.add(DEAD_COUNTERS.get(reason, "dead_http"), len(batch))
        self.release(batch)
        return True

    def retry_parked(self, now_s: float | None = None, force: bool = False) -> None:
        """Try the parked batches again (at most every ``RETRY_PARKED_S`` unless forced)."""
        now_s = time.monotonic() if now_s is None else now_s
        if not self.parked or (now_s < self._next_retry_s and not force):
            return
        self._next_retry_s = now_s + RETRY_PARKED_S
        still = []
        for entry in self.parked:
            batch = entry[0]
            if self.dead_letter(*entry, parked=True):
                self.control.add("parked_items", -len(batch))
            else:
                still.append(entry)
        self.parked = still

    def parked_items(self) -> int:
        return sum(len(batch) for batch, *_ in self.parked)

    def forget_parked(self) -> None:
        """The sender starts over from the release positions: parked records are re-read."""
        self.control.add("parked_items", -self.parked_items())
        self.parked = []

    def _report(self, path: str, exc: OSError | EngineError, then: str) -> None:
        """One error line per path and OS error, naming both."""
        key = (path, getattr(exc, "errno", None))
        if key in self._reported:
            return
        self._reported.add(key)
        error = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        log.error("cannot write items to %s: %s; %s", path, error, then)


def _call_id_text(call_id: bytes) -> str | None:
    return uuid_text(call_id) if any(call_id) else None
