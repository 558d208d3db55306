"""The sender's intake: ring records, read within the in-flight budget, become batches.

    ring records ──read──► ReleaseTracker.track ──Router──► items ──Accumulator──► ready queue

One pass of ``_pump`` is the sender's reading hot loop: a bounded read (a few thousand
records), routing, and the batches the size target or the linger timer cut. A flush request
makes everything read so far go out at once.
"""

from __future__ import annotations

import collections
import logging
import time

from engine import ring
from engine.common._config import EngineConfig
from engine.common._control import Control
from engine.sender._adaptive import SizeTarget
from engine.sender._batcher import Accumulator, Batch, Item
from engine.sender._deadletter import DeadLetters
from engine.sender._persist import unpersisted_reason
from engine.sender._release import ReleaseTracker
from engine.sender._router import Router

log = logging.getLogger("engine.sender")

READ_MAX_RECORDS = 2048
# A run (calls side by side in a ring, read as one record: RunRecord) is at most this many
# bytes, and an eighth of the size target: batches stay close to it, and a batch cut after
# a 413 seldom has to cut a run.
_RUN_MAX_BYTES = 256 << 10


class Intake:
    """The Sender's reading half (a mixin: it shares the Sender's state, declared here)."""

    cfg: EngineConfig
    control: Control
    ringset: ring.RingSet
    reader: ring.RingReader
    tracker: ReleaseTracker
    router: Router
    acc: Accumulator
    size: SizeTarget
    dead: DeadLetters
    ready: collections.deque[Batch]
    held_bytes: int  # bytes of batches ready, waiting or in flight
    flush_seen_ns: int
    flush_heads: list[int] | None

    def _pump(self) -> bool:
        """Read a chunk of records into batches; True if anything was read."""
        read_any = False
        if self.held_bytes + self.acc.open_bytes < self.cfg.max_in_flight_bytes:
            if self.reader.splice_max_bytes:
                self.reader.run_max_bytes = min(_RUN_MAX_BYTES, self.size.bytes // 8)
            records = self.reader.read(READ_MAX_RECORDS)
            if records:
                read_any = True
                self._route_records(records)
        flushing, read_all = self._flushing()
        linger_s = 0.0 if flushing else self.cfg.linger_ms / 1000
        if self.router.held() and (read_all or read_any or self._eager_due()):
            self._add_items(self.router.expire(self.cfg.eager_start_ms / 1000,
                                               self.tracker.read_pos, self.cfg.ring_bytes // 2,
                                               read_all, self.ringset.spec.ring_bytes))
        for batch in self.acc.due(linger_s):
            self._make_ready(batch)
        return read_any

    def _route_records(self, records: list[ring.Record]) -> None:
        self.control.add("items_read", self.reader.last_read_records)
        router = self.router
        items = router.route(records, self.tracker.track(records))
        if router.unroutable:
            for record, ref, detail in router.unroutable:
                self._dead_record(record, ref, detail)
            router.unroutable.clear()
        self._add_items(items)

    def _add_items(self, items: list[Item]) -> None:
        for batch in self.acc.add(items, self.size.take):
            self._make_ready(batch)

    def _make_ready(self, batch: Batch) -> None:
        self.ready.append(batch)
        self.held_bytes += batch.size_bytes

    def _dead_record(self, record: ring.Record, ref: int, detail: str) -> None:
        """A record no route can carry: dead-letter it as it is, never crash on it."""
        try:
            self.dead.add(reason=f"unroutable: {detail}", status=None, call_id=None, route="",
                          project=record.project.decode(errors="replace"),
                          item_json=record.payload)  # one that is not JSON: kept as text
        except OSError as exc:  # it stays in the ring, which is kept for recovery
            log.error("cannot write an unroutable record to %s: %s", self.dead.path, exc)
            self.control.add(unpersisted_reason(exc))
            return
        self.control.add("dead_letters")
        self.control.add("dead_invalid")
        self.tracker.ack((ref,))

    def _read_spliced(self, mode: str) -> None:
        """In complete mode the reader splices a start and its adjacent end itself, and joins
        complete calls side by side into runs (in C)."""
        self.reader.splice_max_bytes = self.router.max_item_bytes if mode == "complete" else 0
        self.reader.run_max_bytes = 0

    def _flushing(self) -> tuple[bool, bool]:
        """A flush request makes everything read go out now (no linger), and, once every
        record written before the request is read, the starts still held for their ends
        alone: (flushing, read all). Sent alone sooner, a start whose end was still unread
        went as a v2 request of its own, and its end as another (toward weave's server,
        two requests where one complete call would do)."""
        requested = self.control.get("flush_request_ns")
        if requested != self.flush_seen_ns:
            self.flush_seen_ns = requested
            self.flush_heads = self.reader.heads()
        if self.flush_heads is None:
            return False, False
        if self.reader.read_past(self.flush_heads):
            if not self.reader.pending():
                self.flush_heads = None
            return True, True
        return True, False

    def _eager_due(self) -> bool:
        oldest = self.router.oldest_pending_s()
        return oldest is not None and time.monotonic() - oldest >= self.cfg.eager_start_ms / 1000
