"""The sender's end: when to stop, how long to deliver, and what happens to the rest.

It stops when the owner's ``close()`` asks (the request carries its deadline), when the
owner is gone (killed, or exited without closing), or on a signal to the sender itself
(its own session keeps the owner's group signals away; a cgroup kill still reaches it).
Until the deadline it delivers as on a flush, serving producers still attached once the
owner is closed or gone (a worker finishing its calls after a Ctrl-C); the last moments
are kept to spool or dead-letter whatever is not acknowledged, never to drop it. What not
even that can save (a full disk) stays in the ring set, which is then kept for the next
engine or ``engine replay``. One line says where everything went.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
import time

from engine import ring
from engine.common._config import EngineConfig
from engine.common._control import Control
from engine.ring import _files as ring_files
from engine.sender._batcher import Accumulator, Batch
from engine.sender._deadletter import DeadLetters
from engine.sender._intake import READ_MAX_RECORDS
from engine.sender._persist import Persister
from engine.sender._release import ReleaseTracker
from engine.sender._report import exit_line
from engine.sender._router import Router
from engine.sender._spool import Spool

log = logging.getLogger("engine.sender")

# the last part of the shutdown time is for persisting what is not delivered
_PERSIST_RESERVE_S = 1.0
_OWN_SPOOL_POLL_S = 0.05  # closing: how often it looks whether its own segments are sent
# A signal while the owner lives: its close() usually follows at once (a cgroup's SIGTERM
# reaches both); wait that long for it before stopping on our own.
_SIGNAL_GRACE_S = 1.0
HOUSEKEEPING_S = 0.1
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Shutdown:
    """The Sender's ending (a mixin: it shares the Sender's state, declared here)."""

    cfg: EngineConfig
    control: Control
    owner_pid: int
    recovering: bool  # started on an orphan: its owner will not come back
    ringset: ring.RingSet
    reader: ring.RingReader
    tracker: ReleaseTracker
    router: Router
    acc: Accumulator
    dead: DeadLetters
    persister: Persister
    ready: collections.deque[Batch]
    waiting: dict[Batch, asyncio.TimerHandle]
    tasks: dict[asyncio.Task, Batch]
    flush_heads: list[int] | None
    stopping: bool
    wake: asyncio.Event | None
    stop_deadline_s: float | None  # set once it is time to stop
    stop_request_seen: int  # the owner's shutdown_request when we last looked
    owner_stops: bool  # the owner closed or is gone (not a signal to us alone)
    signalled: tuple[int, float] | None  # (signal, when)
    spool: Spool | None
    spool_task: asyncio.Task | None
    spool_stop: asyncio.Event
    _said_staying: bool = False

    def _stop_due(self) -> None:
        """Set the stop deadline when it is time: the owner's close() gives it; a dead
        owner or a signal to us gives shutdown_timeout_s from when it was seen."""
        now = time.monotonic()
        # a request already there (a dead owner's, read by a recovering sender) is not news
        self.stop_request_seen = self.control.get("shutdown_request")
        if self.recovering or not owner_alive(self.owner_pid):  # before its old request
            log.warning("%s; delivering what the rings hold for up to %g s",
                        f"recovering ring set {self.ringset.spec.shm_name}" if self.recovering
                        else f"engine owner {self.owner_pid} is gone", self.cfg.shutdown_timeout_s)
            self.owner_stops = True
            self.stop_deadline_s = now + self.cfg.shutdown_timeout_s
        elif requested_ns := self.control.get("shutdown_request"):
            self.owner_stops = True
            self.stop_deadline_s = requested_ns / 1e9
        elif self.signalled and now >= self.signalled[1] + _SIGNAL_GRACE_S:
            self.stop_deadline_s = self.signalled[1] + self.cfg.shutdown_timeout_s

    def _on_signal(self, signum: int) -> None:
        """SIGTERM/SIGINT/SIGHUP: settle what the rings hold, then exit (never die with
        items only in memory)."""
        if self.signalled is None:
            log.warning("%s: settling what the rings hold, then exiting",
                        signal.Signals(signum).name)
            self.signalled = (signum, time.monotonic())
        self.wake.set()

    async def _finish(self) -> None:
        """Deliver until the stop deadline (keeping the last moments to persist), then
        persist what is left, log the exit line, and remove the ring set if nobody needs it."""
        reserve_s = min(_PERSIST_RESERVE_S, 0.2 * self.cfg.shutdown_timeout_s)
        await self._drain(self.stop_deadline_s - reserve_s)
        await self._send_own_spool(self.stop_deadline_s - reserve_s)
        await self._stop_spool_replay(self.stop_deadline_s - reserve_s)
        self.stopping = True
        await self._take_back()
        self._settle_leftovers()
        self.persister.retry_parked(force=True)
        self.persister.say_repeats(force=True)
        self._publish_gauges()
        self._report_exit()
        if self.owner_stops and not ring.holds_records(self.ringset) and not self._attached():
            self.ringset.unlink()
        elif self.owner_stops:  # no reader from here on, though the owner may live for long
            # (a notebook, a Ray driver whose pooled workers keep their slots): the next scan
            # (an Engine, `engine replay`) recovers what it holds, or removes it once the
            # producers still attached have exited
            ring.mark_closed(os.path.dirname(self.ringset.spec.lock_path))

    async def _send_own_spool(self, until_s: float) -> None:
        """The server answering as we close: what this sender spooled (an outage the program
        rode out) goes now, within the stop deadline, not with the next engine toward this
        server (20,000 calls with the server back before the end: 436 were left on disk).
        Not once a replay run begun since kept segments (the server did not take them: it
        fails, or has not come back; the live path may have had nothing to send that would
        tell); what other engines left is sent on the way (oldest first), not waited for
        alone: a backlog would hold every exit."""
        if (self.spool_task is None or self.spool_task.done()
                or not self.spool.pending_of(os.getpid())):
            return
        begun = self.spool_started
        while time.monotonic() < until_s and self.spool.pending_of(os.getpid()):
            if self.spool_task.done() or (self.spool_runs > begun and self.spool_kept):
                return
            self.spool_wake.set()
            await asyncio.sleep(_OWN_SPOOL_POLL_S)

    async def _stop_spool_replay(self, until_s: float) -> None:
        """Let the spool's replay finish the segment it sends (until ``until_s``), so that
        what the server acknowledged is off the disk (else the next engine sends it again);
        cancelled past that (the segment stays whole, and what it did is counted)."""
        if self.spool_task is None:
            return
        self.spool_stop.set()
        self.spool_wake.set()
        done, _ = await asyncio.wait({self.spool_task}, timeout=max(0.0, until_s - time.monotonic()))
        if not done:
            self.spool_task.cancel()
        await asyncio.gather(self.spool_task, return_exceptions=True)

    async def _take_back(self) -> None:
        """Stop the POSTs in flight and the waits before a retry: their batches go back to
        the ready queue, to be persisted. Not the batch of a POST whose answer was settled
        already (its task done, the callback that drops it from ``tasks`` not yet run): it
        was acknowledged, or split into the ready queue, or waits for a retry (taken back
        from there). Taken back all the same, it was persisted after its acknowledgement,
        or twice (a chaos run, seed 6: 4 items of 2,649 both acknowledged or dead-lettered
        and dead-lettered again, with the server down at close)."""
        if self.silence_probe is not None:  # a copy of a batch on disk: nothing to keep
            self.silence_probe.cancel()
            await asyncio.gather(self.silence_probe, return_exceptions=True)
        in_flight = dict(self.tasks)
        for task in in_flight:
            task.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)
        for task, batch in in_flight.items():
            if task.cancelled():  # stopped before its answer: the batch is unsettled
                self.ready.appendleft(batch)
        for batch, timer in list(self.waiting.items()):
            timer.cancel()
            self.ready.appendleft(batch)
        self.waiting.clear()

    async def _drain(self, until_s: float) -> None:
        """Deliver everything as on a flush until all is settled and no producer that may
        still write is attached, or until ``until_s``."""
        attached = self._attached()
        next_check = time.monotonic() + HOUSEKEEPING_S
        while time.monotonic() < until_s:
            self.flush_heads = self.reader.heads()  # no linger, no waiting starts
            progressed = self._pump()
            self._dispatch()
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + HOUSEKEEPING_S
                self._housekeeping()
                attached = self._attached()
                until_s = self._sooner_stop(until_s)
                if attached and self._stays_for(attached, until_s):
                    until_s = max(until_s, time.monotonic() + 2 * HOUSEKEEPING_S)
                    self.stop_deadline_s = max(self.stop_deadline_s, until_s + 1.0)
            if self._settled() and not attached:
                return
            if not progressed:
                await self._idle()

    def _stays_for(self, attached: list[int], until_s: float) -> bool:
        """Whether to deliver past the stop deadline for ``attached`` producers: when the
        owner is gone (SIGKILLed, or ended without close()) and processes it forked still
        write (a Pool finishing its tasks). Nobody else would read what they write after we
        left, and a producer whose ring filled then waited for room for ever (the default
        ``on_full="block"``). We exit once they have. Not after a signal to us (a container
        stopping: its grace period), nor while recovering (``engine replay`` waits for us),
        nor when the owner lives (its close() waits for us, and kills a sender past its
        deadline): such producers stop waiting once nobody reads their ring (see
        ``engine/producer/_slot.py``)."""
        if self.signalled is not None or self.recovering or owner_alive(self.owner_pid):
            return False
        if time.monotonic() >= until_s - HOUSEKEEPING_S and not self._said_staying:
            self._said_staying = True
            log.warning("engine owner %d is gone and %d producer processes it started still "
                        "write: staying while they do", self.owner_pid, len(attached))
        return True

    def _sooner_stop(self, until_s: float) -> float:
        """The owner may ask again for a sooner stop while we deliver (a second Ctrl-C in its
        ``close()``: persist now): its new deadline, when earlier."""
        requested_ns = self.control.get("shutdown_request")
        if requested_ns == self.stop_request_seen or self.stop_deadline_s is None:
            return until_s
        self.stop_request_seen = requested_ns
        requested_s = requested_ns / 1e9
        if requested_s >= self.stop_deadline_s:
            return until_s
        self.owner_stops = True
        self.stop_deadline_s = requested_s
        return min(until_s, requested_s)

    def _attached(self) -> list[int]:
        """Producers that may still write and that we stay for: only once the owner closed
        or is gone (after a signal to us alone the owner starts another sender)."""
        return ring.attached_producers(self.ringset) if self.owner_stops else []

    def _settled(self) -> bool:
        """Nothing read is unsettled, nothing unread waits in the rings."""
        return not (self.ready or self.tasks or self.waiting or self.acc.open
                    or self.router.held() or self.tracker.pending() or self.reader.pending())

    def _settle_leftovers(self) -> None:
        """At exit nothing may vanish: every unacknowledged record is spooled or
        dead-lettered (or, if neither can be written, kept in the ring set)."""
        while True:
            records = self.reader.read(READ_MAX_RECORDS)
            if not records:
                break
            self._route_records(records)
        self._add_items(self.router.expire(0.0, everything=True))
        self._add_items(self.router.ends_waiting())  # after their starts, which go first
        for batch in self.acc.due(0.0, everything=True):
            self._make_ready(batch)
        leftovers = list(self.ready)
        self.ready.clear()
        for batch in leftovers:
            self._give_up(batch, "shutdown", None, "engine closed before delivery")

    def _report_exit(self) -> None:
        slots = self.ringset.counters()["slots"]
        kept = sum(slots[s]["records_written"] - slots[s]["records_released"]
                   for s in self.reader.slots)
        self.control.set("kept_in_ring", kept)
        level, line = exit_line(
            self.control.sender_snapshot(), self.control.producer_totals(), url=self.cfg.url,
            dead_path=str(self.dead.path), spool_dir=self.cfg.spool_dir, kept_records=kept,
            ring_name=self.ringset.spec.shm_name, spool_left=self._spool_left())
        log.log(level, "%s", line)

    def _spool_left(self) -> int | None:
        """The items the spool holds now (whoever spooled them), or None without one."""
        if self.spool is None:
            return None
        try:
            return sum(entry.item_count for entry in self.spool.pending())
        except OSError:  # the folder gone or unreadable: said where it is used
            return None


def owner_alive(owner_pid: int) -> bool:
    """The owner is gone once we were reparented (that happens at its exit, before anyone
    reaps it) or it is a zombie or no longer exists."""
    if os.getppid() != owner_pid:
        return False
    return ring_files.process_start_ticks(owner_pid) is not None
