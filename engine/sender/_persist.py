"""Where a batch goes when the server will not have it: the spool, else the dead letters,
else -- when neither file can be written (a full disk, a path that cannot be created, the
spool at ``spool_max_bytes``, a disk down to ``disk_keep_free_bytes``) -- nowhere: it stays
*parked* in memory with its ring space held, and is tried again every ``RETRY_PARKED_S``:
sent again once the server answers (a batch it did not refuse), else written.

Nothing is released before it is delivered or on disk, so a batch that cannot be persisted
is never lost: at exit it is still in the ring set, which is kept for the next engine or
``engine replay`` to recover (:mod:`engine.ring._orphans`). Each path and OS error (or
bound) is logged once, with its path; the items are counted once by reason
(``unpersisted_no_space``, ``unpersisted_unwritable``, ``unpersisted_spool_full``). A spool
at its bound does not hand its batches to the dead letters: they are not bounded, and
the bound is what the operator chose the spool's disk may hold.

Dead-lettered batches are said once per reason, HTTP status and detail, then at most once
every ``REPEAT_LINE_EVERY_S`` with what went the same way meanwhile ("dead-lettered 51,234
items in 37 batches in the last 60 s (http, HTTP 401): invalid API key"), and what is left
unsaid at exit just before the exit line: a server that refuses every batch of a long eval
fills no log, and every item is still counted (``dead_*``) and said.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.common._control import Control
from engine.common._errors import EngineError
from engine.common._files import KeepFree
from engine.sender._batcher import Batch
from engine.sender._deadletter import DeadLetters
from engine.sender._join import CALL_META
from engine.sender._spool import SpoolFull
from engine.wire._codec import uuid_text

log = logging.getLogger("engine.sender")

_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
RETRY_PARKED_S = 1.0
# a server that refuses batch after batch for the same reason (a wrong key, a project it
# will not take) gets one line, then one line a minute with what it refused meanwhile
REPEAT_LINE_EVERY_S = 60.0
_MAX_REPEAT_KEYS = 256  # distinct (reason, status, detail) remembered; beyond: a line each
DEAD_COUNTERS = {
    "too_large": "dead_too_large",
    "invalid": "dead_invalid",
    "http": "dead_http",
    "deadline": "dead_deadline",
    "outage": "dead_deadline",  # the server down while producers waited for ring space
    "shutdown": "dead_shutdown",
    "start_not_delivered": "dead_deadline",  # the end of a call whose start timed out
}


@dataclass
class _Parked:
    """A batch held in memory (its ring space too) until its file can be written, and why
    it was to be written; ``undelivered``: not refused by the server (spooled if it can be,
    and sent again once the server answers), else a refused one for the dead letters."""

    batch: Batch
    reason: str
    status: int | None
    detail: str
    undelivered: bool


def unpersisted_reason(exc: OSError) -> str:
    """The stats counter an OS error files its items under."""
    return "unpersisted_no_space" if exc.errno in _NO_SPACE else "unpersisted_unwritable"


class Persister:
    """Spools or dead-letters batches; parks those it cannot write anywhere.

    ``release(batch)`` is called once a batch is on disk (its ring space may go).
    """

    def __init__(self, control: Control, dead: DeadLetters, spool: Any | None,
                 release: Callable[[Batch], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.control = control
        self.dead = dead
        self.spool = spool
        self.release = release
        self.parked: list[_Parked] = []
        self._reported: set[tuple[str, int | None]] = set()
        self._next_retry_s = 0.0
        # (reason, status, detail) -> [when it was last said, batches and items since]
        self._repeats: dict[tuple[str, int | None, str], list] = {}
        self._clock = clock

    def give_up(self, batch: Batch, reason: str, status: int | None, detail: str) -> None:
        """A batch not delivered (past its deadline, an outage, closing): spooled if it can
        be, else dead-lettered, else parked; parked, the server answering again sends it."""
        self._persist(_Parked(batch, reason, status, detail, undelivered=True), parked=False)

    def dead_letter(self, batch: Batch, reason: str, status: int | None, detail: str) -> bool:
        """Write a batch the server refused to the dead letters; True once written (if they
        cannot be, the batch is parked)."""
        return self._persist(_Parked(batch, reason, status, detail, undelivered=False),
                             parked=False)

    def _persist(self, entry: _Parked, *, parked: bool) -> bool:
        """Spool (an undelivered batch) or dead-letter ``entry``'s batch; True once on disk.
        Else it is parked (counted by reason the first time: ``parked``, it already is)."""
        batch, detail = entry.batch, entry.detail
        if entry.undelivered and self.spool is not None:
            try:
                self.spool.put(batch.route, batch.body(), len(batch), _call_meta(batch))
            except SpoolFull as exc:  # its bound: the dead letters would only pass it
                self._report(str(self.spool.directory), exc, "they wait in shared memory until "
                             "the server or the spool takes them (producers then wait or "
                             "drop, on_full)", bound=True)
                return self._park(entry, "unpersisted_spool_full", parked)
            except (OSError, EngineError) as exc:  # full or unwritable: the dead letters keep it
                self._report(str(self.spool.directory), exc, "the dead letters take them",
                             bound=isinstance(exc, KeepFree))
                detail = f"{detail}; spool refused it: {exc}"
            else:
                self.control.add("spooled_batches")
                self.control.add("spooled_items", len(batch))
                self.release(batch)
                return True
        reason, status = entry.reason, entry.status
        try:
            self.dead.add_batch(
                reason=f"{reason}: {detail}" if detail else reason, status=status,
                route=batch.route,
                items=[(_call_id_text(call_id), item.project.decode(), data)
                       for item in batch.items for call_id, data in item.each_call()])
        except OSError as exc:
            self._report(str(self.dead.path), exc, "they stay in shared memory until it can "
                         "be written (and at exit, for recovery)", bound=isinstance(exc, KeepFree))
            return self._park(entry, unpersisted_reason(exc), parked)
        self._say_dead(len(batch), reason, status, detail)
        self.control.add("dead_letters", len(batch))
        self.control.add(DEAD_COUNTERS.get(reason, "dead_http"), len(batch))
        self.release(batch)
        return True

    def _park(self, entry: _Parked, counter: str, parked: bool) -> bool:
        if not parked:
            batch = entry.batch
            if not batch.was_parked:  # not again for a parked batch sent back and refused
                batch.was_parked = True
                self.control.add(counter, len(batch))
            self.parked.append(entry)
            self.control.add("parked_items", len(batch))
        return False

    def retry_parked(self, now_s: float | None = None, force: bool = False,
                     resend: Callable[[list[Batch]], None] | None = None,
                     probe: bool = False) -> None:
        """Try the parked batches again (at most every ``RETRY_PARKED_S`` unless forced).

        ``resend`` (the server answers): the undelivered ones go back to it, not to disk
        (the disk may have room again by then: that is no reason to keep them from the
        server); ``probe`` with it (the server not answering, nothing else sent): only the
        oldest goes, to learn when it is back (parked batches hold the ring space the
        producers wait for: they may send nothing else)."""
        now_s = time.monotonic() if now_s is None else now_s
        if not self.parked or (now_s < self._next_retry_s and not force):
            return
        self._next_retry_s = now_s + RETRY_PARKED_S
        if resend is not None:
            back = [e for e in self.parked if e.undelivered]
            if probe:
                back = back[:1]
            if back:
                taken = {id(e) for e in back}
                self.parked = [e for e in self.parked if id(e) not in taken]
                self.control.add("parked_items", -sum(len(e.batch) for e in back))
                resend([e.batch for e in back])
                if probe:
                    return
        still = []
        for entry in self.parked:
            if self._persist(entry, parked=True):
                self.control.add("parked_items", -len(entry.batch))
            else:
                still.append(entry)
        self.parked = still

    def _say_dead(self, items: int, reason: str, status: int | None, detail: str) -> None:
        """The first batch of a reason said at once; the next ones with it, together, when
        ``REPEAT_LINE_EVERY_S`` has passed since it was last said (:meth:`say_repeats`)."""
        now_s = self._clock()
        key = (reason, status, detail)
        seen = self._repeats.get(key)
        if seen is None:
            if len(self._repeats) >= _MAX_REPEAT_KEYS:
                self.say_repeats(force=True)
                self._repeats.clear()
            self._repeats[key] = [now_s, 0, 0]
            _dead_line(key, items, 1, None)
            return
        seen[1] += 1
        seen[2] += items
        if now_s - seen[0] >= REPEAT_LINE_EVERY_S:
            self._say_repeat(key, seen, now_s)

    def say_repeats(self, force: bool = False) -> None:
        """Say what was dead-lettered unsaid for a reason last said ``REPEAT_LINE_EVERY_S``
        ago (``force``: all of it, as at exit)."""
        now_s = self._clock()
        for key, seen in self._repeats.items():
            if seen[1] and (force or now_s - seen[0] >= REPEAT_LINE_EVERY_S):
                self._say_repeat(key, seen, now_s)

    @staticmethod
    def _say_repeat(key: tuple[str, int | None, str], seen: list, now_s: float) -> None:
        _dead_line(key, seen[2], seen[1], now_s - seen[0])
        seen[:] = [now_s, 0, 0]

    def parked_items(self) -> int:
        return sum(len(entry.batch) for entry in self.parked)

    def forget_parked(self) -> None:
        """The sender starts over from the release positions: parked records are re-read."""
        self.control.add("parked_items", -self.parked_items())
        self.parked = []

    def _report(self, path: str, exc: OSError | EngineError, then: str, *,
                bound: bool = False) -> None:
        """One line per path and OS error (or bound), naming both: an error, or a warning
        for a bound the settings set (it holds what it was set to hold)."""
        key = (path, "bound" if bound else getattr(exc, "errno", None))
        if key in self._reported:
            return
        self._reported.add(key)
        error = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        log.log(logging.WARNING if bound else logging.ERROR,
                "cannot write items to %s: %s; %s", path, error, then)


def _dead_line(key: tuple[str, int | None, str], items: int, batches: int,
               over_s: float | None) -> None:
    reason, status, detail = key
    what = f"{items:,} item{'s' if items != 1 else ''}"
    if over_s is not None:
        what += f" in {batches:,} batch{'es' if batches != 1 else ''} in the last {over_s:.0f} s"
    # at shutdown the exit line counts them and says where they went: INFO
    log.log(logging.INFO if reason == "shutdown" else logging.ERROR, "dead-lettered %s (%s%s): %s",
            what, reason, "" if status is None else f", HTTP {status}", detail)


def _call_meta(batch: Batch) -> dict[str, Any] | None:
    """A v2 start or end request's segment names its call, so that a replay finds the two
    of one call without reading every segment (engine/sender/_join.py)."""
    first = batch.items[0]
    call_id = _call_id_text(first.call_id) if first.single else None
    return {CALL_META: [first.project.decode(), call_id]} if call_id else None


def _call_id_text(call_id: bytes) -> str | None:
    return uuid_text(call_id) if any(call_id) else None
