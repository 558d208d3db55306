"""The sender's delivery: batches in flight, and what each answer does to them.

    ready queue ──_dispatch──► POST tasks ──answer──► _settle ──► ack / split / retry later
                                                                  / spool / dead-letter

``_settle`` is the policy: a 2xx acknowledges (ring space is released through the
ReleaseTracker), a 413 or 422 splits, a retriable failure waits with backoff up to the
delivery deadline, then the batch is spooled or dead-lettered; nothing is dropped unsaid.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import math
import random
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from engine.common._config import EngineConfig, persisted_to
from engine.common._control import Control
from engine.common._errors import SendError, reason_of
from engine.common._retry import (
    ISOLATE_MAX_IN_A_ROW,
    WEB_PAGE_REASON,
    Backoff,
    Verdict,
    classify,
    is_web_page,
    retry_after_s,
    start_not_found,
)
from engine.ring import RingReader
from engine.sender._adaptive import AdaptiveConcurrency, SizeTarget
from engine.sender._batcher import Accumulator, Batch
from engine.sender._deadletter import DeadLetters
from engine.sender._outage import OutageLog, failure_text
from engine.sender._persist import Persister
from engine.sender._release import ReleaseTracker
from engine.sender._router import UPSERT_ROUTE, Router, as_single, as_upsert
from engine.sender._transport import Compressor, Response, Transport
from engine.wire._codec import uuid_text

if TYPE_CHECKING:
    from engine.sender._spool import Spool

log = logging.getLogger("engine.sender")

_CAPABILITIES = "trace_id_on_end,eval_child_meta"
# Bodies of at most this many items (runs of calls: a few hundred KiB each) are posted as
# their pieces, gathered by the kernel; a body of many small items is joined first (an
# iovec per small piece costs more than copying it).
_MAX_GATHERED_ITEMS = 64
# v2 single requests (one call's start or end, ~1 KB) in flight per slot of the adaptive
# concurrency limit (max_in_flight); the connection pool holds that many more
SINGLES_PER_SLOT = 4
# the server failing this long (but with 429, "slow down") while producers wait for ring
# space: the batches waiting for a retry or their turn go to disk then, not at their
# delivery_deadline_s (:meth:`Delivery._spill_for_producers`)
SPILL_AFTER_S = 5.0
SPILL_DETAIL = ("the server failing while producers waited for ring space: persisted before "
                "delivery_deadline_s so that the traced program goes on")
# a call answered 500 alone at least this many times in a row while the server acknowledged
# others is dead-lettered (_isolate_500); more where other requests fail 500 too
POISON_ATTEMPTS = 4
# ... as many as make such a run a one-in-this chance for a server failing 500 at random
_BLAME_CHANCE = 1e-6
_RATE_500_WEIGHT = 0.02  # of each answer in the running share of answers 500
# the server silent (the silent_after_s setting) and producers waiting, the requests in flight
# are taken back and persisted (a ring's oldest records pin all its space until settled), and
# one copy of a batch on disk probes the server, this long each (or twice the slowest answer;
# at most silent_after_s)
PROBE_EVERY_S = 2.0
SILENT_DETAIL = ("no answer from the server while producers waited for ring space: taken back "
                 "from the request in flight and persisted so that the traced program goes on")


class Delivery:
    """The Sender's delivering half (a mixin: it shares the Sender's state, declared here)."""

    cfg: EngineConfig
    control: Control
    reader: RingReader
    tracker: ReleaseTracker
    router: Router
    acc: Accumulator
    size: SizeTarget
    concurrency: AdaptiveConcurrency
    backoff: Backoff
    rng: random.Random
    dead: DeadLetters
    spool: Spool | None
    persister: Persister
    ready: collections.deque[Batch]
    waiting: dict[Batch, asyncio.TimerHandle]  # sleeping before a retry
    held_bytes: int
    tasks: dict[asyncio.Task, Batch]  # POSTs in flight
    single_tasks: set[asyncio.Task]  # of them, v2 single requests
    fatal: BaseException | None
    stopping: bool
    wake: asyncio.Event | None
    transport: Transport | None
    compressor: Compressor | None
    executor: concurrent.futures.ThreadPoolExecutor | None
    latencies_us: collections.deque[int]
    outage: OutageLog
    last_retry_status: int | None  # of the last answer that meant "retry later" (None: none)
    spilling: bool  # what fails goes to disk at once (see _spill_for_producers)
    last_answer_s: float  # when the server last answered anything (or the sender started)
    slowest_answer_s: float  # the longest round trip of an answer so far
    silent: bool  # no answer for _silent_after_s() with requests in flight, until one comes
    last_ack_s: float  # when the server last acknowledged a request (0.0: never)
    errors_500_in_a_row: int  # answers 500 since the last answer of another kind
    rate_500: float  # the running share of answers 500 (pieces of a split one aside)
    taken_back: set[asyncio.Task]  # requests in flight stopped by the spill: the server silent
    silence_probe: asyncio.Task | None  # the request probing a silent server (_probe_silence)
    silence_probe_s: float  # when it was sent

    def _waiting_items(self) -> int:
        """Items read and not yet settled (what an outage warning counts), the parked too."""
        batches = [*self.ready, *self.waiting, *self.tasks.values(), *self.acc.open.values()]
        return (sum(len(b) for b in batches) + self.router.held()
                + self.persister.parked_items())

    def _slots_busy(self, singles_more: int = 0) -> int:
        """In-flight slots taken, a v2 single request (a call's start or end alone, ~1 KB)
        counting as 1/SINGLES_PER_SLOT of one: thousands of calls open at once toward a
        server without upsert batches (weave's) send two of them per call, and one request
        per slot made the round trip their wall (docs/throughput.md)."""
        singles = len(self.single_tasks)
        return len(self.tasks) - singles + -(-(singles + singles_more) // SINGLES_PER_SLOT)

    def can_dispatch(self) -> bool:
        """Whether the next ready batch may go now (not while the server is silent and
        producers wait: a request would pin its ring's oldest records; a copy of a batch on
        disk probes it instead, :meth:`_probe_silence`)."""
        if not self.ready or (self.silent and self.spilling):
            return False
        single = self.ready[0].items[0].single
        return self._slots_busy(1 if single else 0) + (0 if single else 1) <= \
            self.concurrency.limit

    def _dispatch(self) -> None:
        while self.can_dispatch():
            batch = self.ready.popleft()
            if self.router.probe_upsert and batch.items[0].single:
                batch = self._regroup_singles(batch)
            if (len(batch) > 1 and batch.size_bytes > self.size.bytes
                    and batch.target_bytes != self.size.probing_bytes):
                # made before a 413 taught us a lower target: don't upload what will fail
                self._requeue_pieces(batch, batch.chunks(self.size.bytes))
                continue
            if self.ready:
                self._join_ready(batch)
            # from now, not from its last attempt (or 0.0, never sent): the silence counts
            # from the oldest request in flight, and this one may wait for its compression
            batch.sent_s = time.monotonic()
            task = asyncio.create_task(self._deliver(batch))
            self.tasks[task] = batch
            if batch.items[0].single:
                self.single_tasks.add(task)
            task.add_done_callback(self._task_done)

    def _regroup_singles(self, first: Batch) -> Batch:
        """``first``, a v2 request never sent, and the ones queued behind it, as one upsert
        batch once their projects take them: a start routed alone while its project could
        not try upsert batches yet (thousands, with thousands of calls open) would
        otherwise wait its turn as a request of its own."""
        router, ready, limit = self.router, self.ready, self.size.bytes
        if first.attempts or not router.takes_upsert(first.items[0].project):
            return first
        batch = Batch(UPSERT_ROUTE, [as_upsert(first.items[0])])
        held = first.size_bytes
        while ready and ready[0].items[0].single and not ready[0].attempts:
            item = ready[0].items[0]
            if (batch.size_bytes + item.size + 64 > limit
                    or not router.takes_upsert(item.project)):
                break
            held += ready.popleft().size_bytes
            batch.add(as_upsert(item))
        self.held_bytes += batch.size_bytes - held
        return batch

    def _join_ready(self, batch: Batch) -> None:
        """The batches queued behind ``batch`` join it up to today's size target, or up to
        an armed probe's size, which the joined batch then carries. Batches queue while every
        slot is busy (a distant server: each POST waits out a long round trip), cut at the
        target of when they were read; joined, they go out in the larger bodies the target
        has grown to, and the probe that grows it need not wait behind them."""
        size = self.size
        if not batch.target_bytes or batch.target_bytes == size.probing_bytes:
            return  # a piece of a split, or the probe: each goes as it was cut
        target = size.bytes
        limit = size.armed_bytes or target
        ready, joined = self.ready, False
        while ready and ready[0].target_bytes != size.probing_bytes and batch.joins(ready[0], limit):
            other = ready.popleft()
            held = batch.size_bytes + other.size_bytes
            batch.absorb(other)
            self.held_bytes -= held - batch.size_bytes  # one envelope fewer
            joined = True
        batch.target_bytes = size.take() if joined and batch.size_bytes > target else target

    def _task_done(self, task: asyncio.Task) -> None:
        batch = self.tasks.pop(task, None)
        self.single_tasks.discard(task)
        if task in self.taken_back:
            self.taken_back.discard(task)
            # stopped unanswered; at a stop, _take_back persists it with the rest
            if task.cancelled() and batch is not None and not self.stopping:
                self._give_up(batch, "outage", None, SILENT_DETAIL)
        if not task.cancelled() and task.exception() is not None and self.fatal is None:
            self.fatal = task.exception()
        self.wake.set()

    # -- delivering one batch -----------------------------------------------------------

    async def _deliver(self, batch: Batch) -> None:
        encoding = None
        if self.compressor is not None:
            body = batch.body()
            wire = await self.compressor.compress_async(body, self.executor)
            raw_bytes, encoding = len(body), "zstd"
        elif len(batch.items) <= _MAX_GATHERED_ITEMS and not batch.items[0].single:
            # a few large pieces (runs): the kernel gathers them, nothing joins them first
            wire = body = batch.body_parts()
            raw_bytes = sum(map(len, body))
        else:
            wire = body = batch.body()
            raw_bytes = len(body)
        batch.sent_s = time.monotonic()
        if batch.first_sent_s is None:
            batch.first_sent_s = batch.sent_s
        batch.attempts += 1
        in_flight = self._slots_busy()
        self._count_sent(batch, raw_bytes, raw_bytes if encoding is None else len(wire))
        response: Response | None = None
        error: SendError | None = None
        try:
            response = await self.transport.post(
                batch.route, wire, content_encoding=encoding, retry_id=batch.retry_id,
                headers=self._headers(batch), timeout_s=self.cfg.request_timeout_s)
        except SendError as exc:
            # without its traceback: that holds this frame, whose locals hold the error
            # (and the body): a cycle only the collector would free
            error = exc.with_traceback(None)
        verdict = classify(response.status if response else None,
                           response.body if response else b"", error)
        self._settle(batch, verdict, response, error, raw_bytes, in_flight)

    def _headers(self, batch: Batch) -> dict[str, str] | None:
        first = batch.items[0]
        if first.single:
            return {"X-Weave-Trace-Id": uuid_text(first.trace_id)}
        if batch.route == UPSERT_ROUTE and all(i.ends_carry_trace for i in batch.items):
            return {"X-Weave-Client-Capabilities": _CAPABILITIES}
        return None

    def _settle(self, batch: Batch, verdict: Verdict, response: Response | None,
                error: SendError | None, raw_bytes: int, in_flight: int) -> None:
        rtt_s = response.rtt_s if response else self.cfg.request_timeout_s
        status = response.status if response else None
        self._heard(response)
        size_before = self.size.bytes
        if status != 500:
            self.errors_500_in_a_row = batch.run_500 = 0
        if response is not None and not batch.suspect:  # a piece's 500s are its call's
            self.rate_500 += _RATE_500_WEIGHT * ((status == 500) - self.rate_500)
        if verdict is Verdict.OK:
            self.last_ack_s = self.last_answer_s
            # what the producers' rings hold at once (ring_bytes each, for ordinary items)
            rings_bytes = self.reader.active_slot_count() * self.cfg.ring_bytes
            self.size.cap_bytes = max(self.cfg.min_request_bytes,
                                      rings_bytes // self.cfg.max_in_flight)
            self.concurrency.on_response(rtt_s, overloaded=False, in_flight=in_flight)
            self.size.on_success(raw_bytes, batch.target_bytes)
            self.outage.succeeded()
            self._acknowledge(batch, raw_bytes)
            if self.router.probe_upsert and batch.route != UPSERT_ROUTE:
                self.router.v2_acked(batch.items[0].project)  # v2 routes: one project each
        elif verdict is Verdict.SPLIT_413:
            self.control.add("rejected_bytes_413", raw_bytes)
            self.size.on_413(raw_bytes)
            self._split(batch, "splits_413", "too_large", status, response)
        elif verdict is Verdict.SPLIT_422:
            self._split(batch, "splits_422", "invalid", status, response)
        elif verdict is Verdict.RETRY:
            overloaded = status in (429, 503) or response is None
            self.last_retry_status = status
            self.concurrency.on_response(rtt_s, overloaded=overloaded, in_flight=in_flight)
            if not (batch.suspect and status == 500):  # a piece's 500s are its call's
                self.outage.failed(failure_text(status, error, _reason(response)),
                                   self._waiting_items)
            if status != 500 or not self._isolate_500(batch, response):
                self._retry_later(batch, response, error)
        elif verdict is Verdict.COMPLETE_MODE_REQUIRED and self._alone_upserts(batch):
            self._upsert_refused(batch, server_wide=False)
        elif status in (404, 405) and self._alone_upserts(batch):
            self._upsert_refused(batch, server_wide=True)
        elif verdict is Verdict.COMPLETE_MODE_REQUIRED:
            self._switch_mode("complete")
        elif response is not None and batch.items[0].single and start_not_found(
                status, response.body):
            # weave's server: "Cannot end call …: no start found" -- its start, acknowledged,
            # may not show yet (asynchronous inserts); sent again until the deadline
            self._retry_later(batch, response, error)
        elif status == 404 and self.cfg.target == "auto" and self.router.mode == "complete":
            self._switch_mode("upsert")  # no such route: an older server
        elif status == 400 and batch.holds_invalid_json():
            # one call the server cannot read fails its whole body: isolate it, as a 422's
            self._split(batch, "splits_422", "invalid", status, response)
        else:
            self._dead_letter(batch, "http", status, _reason(response))
        if self.size.bytes != size_before:
            self.concurrency.new_baseline()
        self._publish_gauges()

    def _isolate_500(self, batch: Batch, response: Response) -> bool:
        """A batch answered 500 again and again while the server takes others holds a call
        it cannot take (weave's server answers 500 to an item it fails on): retried to its
        deadline, the whole batch pinned its ring (the program waited) and went to disk
        with its good calls, and a replay met the same 500 with every letter behind it.
        Now it is split in halves at its second 500 (a piece at its first), and a call
        answered 500 alone ``attempts_to_blame()`` times in a row (4 from a server that
        answers others well; a flaky one needs more), the server having acknowledged another
        request since it was first sent, is dead-lettered (reason ``http``, status 500). In a
        row: another answer to it (a 429, a reset) starts the count again -- counted over its
        life, a call retried through a long outage of a server failing some requests 500 at
        random was taken for one the server fails on (chaos seed 513: 6 such 500s among
        retries mostly answered 429 or reset).
        Not while nothing but 500s come back (``ISOLATE_MAX_IN_A_ROW``): that is an outage,
        retried as one. True when the batch was split or dead-lettered here."""
        batch.errors_500 += 1
        batch.run_500 += 1
        self.errors_500_in_a_row += 1
        if self.errors_500_in_a_row > ISOLATE_MAX_IN_A_ROW:
            return False
        if len(batch) > 1:
            if batch.errors_500 < (1 if batch.suspect else 2):
                return False
            self._split(batch, "splits_500", "http", 500, response, suspect=True)
            return True
        if (batch.run_500 < attempts_to_blame(self.rate_500)
                or self.last_ack_s <= (batch.first_sent_s or 0.0)):
            return False
        self._dead_letter(batch, "http", 500, (
            f"{_reason(response)} -- answered 500 to this call alone {batch.run_500} times in "
            "a row while it took others").lstrip(" -"))
        return True

    def _alone_upserts(self, batch: Batch) -> bool:
        """Whether ``batch`` is an upsert batch of starts and ends that went alone (complete
        mode): the server may refuse those per project, and they may go as v2 requests."""
        return batch.route == UPSERT_ROUTE and self.router.mode == "complete"

    def _upsert_refused(self, batch: Batch, server_wide: bool) -> None:
        """The server refused an upsert batch of starts and ends that went alone: for its
        projects (CALLS_COMPLETE_MODE_REQUIRED), or for all (no such route: 404, 405). Its
        items go first, each as a v2 request, settling the same ring records; the server
        stored none of them (weave's inserts a batch at its end, or not at all)."""
        projects = {item.project for item in batch.items}
        log.info("the server refused /call/upsert_batch %s; what goes alone there goes as v2 "
                 "call/start and call/end requests", "for every project" if server_wide else
                 "for " + ", ".join(sorted(p.decode(errors="replace") for p in projects)))
        self.router.refuse_upsert(projects, server_wide)
        self.size.forget(batch.target_bytes)
        singles = list(map(as_single, batch.items))
        sent = self.router.hold_ends(singles)  # an end waits for its start's request
        self._requeue_pieces(batch, [Batch(item.route, [item]) for item in sent])
        self.control.add("upsert_refused")

    def _acknowledge(self, batch: Batch, raw_bytes: int) -> None:
        self.held_bytes -= batch.size_bytes
        # the router's counts before the release a flush() waits for: stats() after it
        # shows them whole (else they wait for the next housekeeping tick)
        self._publish_router_counts()
        self.tracker.ack(batch.refs())
        if self.router.starts_unsettled:  # a v2 call/start: the end that waited may go
            ends = self.router.start_settled(batch.items)
            if ends:
                self._add_items(ends)
        self.control.add("items_acked", len(batch))
        self.control.add("bytes_acked", raw_bytes)
        self.control.add("batches_acked")
        now_ns = time.monotonic_ns()
        step = max(1, len(batch) // 64)
        for item in batch.items[::step]:
            self.latencies_us.append((now_ns - item.enqueue_ns) // 1000)

    def _publish_router_counts(self) -> None:
        self.control.set("completes_spliced", self.router.spliced)
        self.control.set("eager_starts", self.router.eager_starts)

    def _split(self, batch: Batch, counter: str, reason: str, status: int | None,
               response: Response | None, *, suspect: bool = False) -> None:
        """``batch`` cut to the size target (a 413) or in halves, its pieces first in the
        queue (``suspect``: pieces of a batch answered 500, see :meth:`_isolate_500`); a
        batch of one item is dead-lettered instead, for ``reason``."""
        self.size.forget(batch.target_bytes)
        if len(batch) == 1:
            self._dead_letter(batch, reason, status, _reason(response))
            return
        self.control.add(counter)
        pieces = batch.chunks(self.size.bytes) if reason == "too_large" else batch.halves()
        for piece in pieces:
            piece.suspect = piece.suspect or suspect
        self._requeue_pieces(batch, pieces)

    def _requeue_pieces(self, batch: Batch, pieces: list[Batch] | tuple[Batch, ...]) -> None:
        """``batch``'s pieces go first in the queue; a run cut in pieces releases its ring
        records once every piece is settled."""
        self.held_bytes += sum(p.size_bytes for p in pieces) - batch.size_bytes
        shared = collections.Counter(ref for p in pieces for item in p.items if item.cuts
                                     for ref in item.refs)
        for ref, count in shared.items():
            if count > 1:
                self.tracker.split(ref, count - 1)
        self.ready.extendleft(reversed(pieces))

    def _retry_later(self, batch: Batch, response: Response | None, error: SendError | None) -> None:
        elapsed_s = time.monotonic() - batch.first_sent_s
        if self.spilling and (response is None or response.status != 429):
            self._give_up(batch, "outage", response.status if response else None, SPILL_DETAIL)
            return
        if elapsed_s >= self.cfg.delivery_deadline_s or self.stopping:
            what = failure_text(response.status if response else None, error, _reason(response))
            self._give_up(batch, "deadline", response.status if response else None,
                          f"not delivered within {self.cfg.delivery_deadline_s:g} s; last: {what}")
            return
        self.control.add("retries")
        hint = retry_after_s(response.headers) if response else None
        delay_s = self.backoff.delay_s(batch.attempts, self.rng, hint)
        delay_s = min(delay_s, max(0.0, self.cfg.delivery_deadline_s - elapsed_s))
        self.waiting[batch] = asyncio.get_running_loop().call_later(delay_s, self._requeue, batch)

    def _requeue(self, batch: Batch) -> None:
        del self.waiting[batch]
        self.ready.appendleft(batch)
        self.wake.set()

    def _give_up(self, batch: Batch, reason: str, status: int | None, detail: str) -> None:
        """A batch past its deadline: spooled if we can, else dead-lettered, else parked
        (engine/sender/_persist.py); released only once it is on disk."""
        self.size.forget(batch.target_bytes)
        self.persister.give_up(batch, reason, status, detail)

    def _retry_parked(self) -> None:
        """Parked batches (their file could not be written: a full disk, the spool at
        ``spool_max_bytes``) go to the server again once it answers, else to disk again;
        while it does not, the oldest probes it when nothing else is sent (their ring space
        is what the producers wait for: there may be nothing else to send)."""
        if self.stopping:
            self.persister.retry_parked()
            return
        answering = self.outage.since_s is None and not self.spilling
        idle = not (self.tasks or self.ready or self.waiting)
        self.persister.retry_parked(resend=self._resend if answering or idle else None,
                                    probe=not answering)

    def _resend(self, batches: list[Batch]) -> None:
        """Parked batches, older than those queued, go first; their deadline counts anew."""
        for batch in reversed(batches):
            batch.first_sent_s = None
            self.ready.appendleft(batch)
        self.wake.set()

    def _silent_after_s(self) -> float:
        return max(self.cfg.silent_after_s, 3 * self.slowest_answer_s)

    def _probe_every_s(self) -> float:
        """Once silent, how long each probe of the server is tried (:meth:`_probe_silence`)."""
        return max(min(PROBE_EVERY_S, self.cfg.silent_after_s), 2 * self.slowest_answer_s)

    def _notice_silence(self) -> None:
        """A server that takes requests and answers none (frozen, a proxy holding them, a
        half-open connection) failed nothing until ``request_timeout_s`` (60 s), and each
        retry waited as long again: producers waited minutes for ring space before the spill.
        Now no answer of any kind for ``_silent_after_s()`` since the oldest request in
        flight went out counts as failing: one warning, and with producers waiting the spill
        (:meth:`_spill_for_producers`), which then also takes back the requests in flight
        and probes the server with one copy of a batch on disk at a time. An answer (any)
        ends it."""
        if not self.tasks:
            return
        oldest_s = min(batch.sent_s for batch in self.tasks.values())
        quiet_since = max(self.last_answer_s, oldest_s)
        if time.monotonic() - quiet_since < self._silent_after_s():
            return
        self.silent = True
        self.last_retry_status = None  # a 429 before the silence does not hold the spill back
        self.outage.silent(quiet_since, self.last_answer_s, len(self.tasks), self._waiting_items)

    def _spill_for_producers(self, producers_wait: Callable[[], bool]) -> None:
        """The server failing for ``SPILL_AFTER_S`` while producers wait for ring space
        (``producers_wait()``, asked only then): from then until it answers (``spilling``),
        the batches waiting for a retry or queued, and each that fails, are spooled or
        dead-lettered at once, as at their deadline, and their ring space freed (a batch
        sent is tried once: the server may be back). Not while it answers 429 (it is up
        and asks for less: the producers' wait is the backpressure it wants), nor requests
        in flight, unless the server is silent (:meth:`_notice_silence`): then those are
        taken back first, and one copy of a batch on disk probes it (:meth:`_probe_silence`).

        Before, a traced program met the full ring and waited for each batch's
        ``delivery_deadline_s`` (120 s): through 16 MiB rings an eval ran at a few dozen
        calls a second while its server was down, and a Ctrl-C'd asyncio eval, whose
        cancelled calls each wrote an end, did not end.
        """
        since = self.outage.since_s
        if since is None or self.last_retry_status == 429:
            self.spilling = False
            return
        if not self.spilling:
            failing_s = time.monotonic() - since
            if failing_s < SPILL_AFTER_S or not producers_wait():
                return
            self.spilling = True
            log.warning("server %s failing for %.0f s while producers wait for ring space: "
                        "what is not delivered goes to %s at once, not after "
                        "delivery_deadline_s=%g s, so that the traced program goes on",
                        self.outage.url, failing_s, persisted_to(self.cfg),
                        self.cfg.delivery_deadline_s)
        if self.silent:  # their ring space is what the producers wait for
            for task in self.tasks:
                if task not in self.taken_back:
                    self.taken_back.add(task)
                    task.cancel()
            if self.taken_back:  # on disk first (_task_done, at once): the queued batches
                return  # are newer, and a call's start must not follow its end there
        batches = [*self.waiting, *self.ready]  # the retries are the older ones
        for timer in self.waiting.values():
            timer.cancel()
        self.waiting.clear()
        self.ready.clear()
        for batch in batches:
            self._give_up(batch, "outage", self.last_retry_status, SPILL_DETAIL)
        if self.silent:
            self._probe_silence(batches[-1] if batches else None)

    def _probe_silence(self, persisted: Batch | None) -> None:
        """While the server is silent and producers wait, no batch is sent (each request
        pinned its ring's oldest records until taken back: a ring freed about half of
        itself every 2 s, ~52 KB/s through a 64 KiB ring). One request at a time probes
        the server instead, a copy of a batch already on disk (``persisted``), tried for
        ``_probe_every_s()``: any answer ends the silence; acknowledged, the copy on disk
        is a duplicate the server's merge absorbs when it is replayed."""
        probe = self.silence_probe
        if probe is not None and not probe.done():
            if time.monotonic() - self.silence_probe_s < self._probe_every_s():
                return
            probe.cancel()
        if persisted is None:
            return
        self.silence_probe_s = time.monotonic()
        self.silence_probe = asyncio.create_task(self._probe(persisted))

    def _heard(self, response: Response | None) -> None:
        """An answer (or a failure to connect) came: the server is not silent. An answer
        held through a silence is no measure of the server's pace: counted, it lengthened
        the next silence's wait by three times the hold."""
        if response is not None and response.rtt_s > self.slowest_answer_s and not self.silent:
            self.slowest_answer_s = response.rtt_s
        self.last_answer_s, self.silent = time.monotonic(), False

    async def _probe(self, batch: Batch) -> None:
        response: Response | None = None
        error: SendError | None = None
        try:
            response = await self.transport.post(
                batch.route, batch.body(), headers=self._headers(batch),
                timeout_s=self.cfg.request_timeout_s)
        except SendError as exc:
            error = exc.with_traceback(None)
        self._heard(response)
        status = response.status if response else None
        if classify(status, response.body if response else b"", error) is Verdict.OK:
            self.outage.succeeded()  # delivering again: the spill ends
        else:
            self.outage.failed(failure_text(status, error, _reason(response)),
                               self._waiting_items)
        self.wake.set()

    def _dead_letter(self, batch: Batch, reason: str, status: int | None, detail: str) -> None:
        self.size.forget(batch.target_bytes)
        self.persister.dead_letter(batch, reason, status, detail)

    def _release(self, batch: Batch) -> None:
        """A batch is settled (acknowledged elsewhere, or on disk): its ring space may go.
        The end that waited for a v2 call/start put on disk goes there after it (sent, it
        would find no start): a replay sends them in that order."""
        self.held_bytes -= batch.size_bytes
        self.tracker.ack(batch.refs())
        if self.router.starts_unsettled:
            for end in self.router.start_settled(batch.items):
                alone = Batch(end.route, [end])
                self.held_bytes += alone.size_bytes
                self._give_up(alone, "start_not_delivered", None,
                              "its call's start was not delivered either")

    def _switch_mode(self, mode: str) -> None:
        """The server wants the other ingest shape: start over from the release positions.

        The rings still hold every unacknowledged record, so everything in memory (open and
        queued batches, waiting starts, requests in flight) is dropped and re-read in the new
        mode; the server's idempotent upsert absorbs anything that arrives twice.
        """
        log.warning("server asks for %s mode; switching from %s", mode, self.router.mode)
        for task in self.tasks:
            task.cancel()
        self.tasks.clear()
        self.single_tasks.clear()
        for timer in self.waiting.values():
            timer.cancel()
        self.waiting.clear()
        self.ready.clear()
        if self.size.probing_bytes is not None:
            self.size.forget(self.size.probing_bytes)  # its batch is read again, cut anew
        self.acc = Accumulator()
        # a server that refused an upsert batch gets what goes alone as v2 requests from now on
        self.router = Router(mode, self.router.max_item_bytes,
                             self.router.alone_batched and mode != "complete")
        self._read_spliced(mode)
        self.tracker = ReleaseTracker(self.reader.release)
        self.held_bytes = 0
        self.persister.forget_parked()  # their records are read again with the rest
        self.reader.rewind()
        self.control.set("complete_mode", int(mode == "complete"))

    def _count_sent(self, batch: Batch, raw_bytes: int, wire_bytes: int) -> None:
        control = self.control
        control.add("requests_sent")
        control.add("bytes_sent_raw", raw_bytes)
        control.add("bytes_sent_wire", wire_bytes)
        if batch.attempts == 1:
            control.add("batches_sent")
            control.add("items_sent", len(batch))


def attempts_to_blame(rate_500: float) -> int:
    """How many answers 500 in a row a call alone must get before it is taken for one the
    server fails on: ``POISON_ATTEMPTS``, or as many as make the run a ``_BLAME_CHANCE``
    for a server answering ``rate_500`` of its requests 500 at random (0.1: 6; 0.5: 20)."""
    if rate_500 <= _BLAME_CHANCE ** (1 / POISON_ATTEMPTS):
        return POISON_ATTEMPTS
    if rate_500 >= 0.9:
        return sys.maxsize  # a server failing nearly everything: its outage, not this call
    return math.ceil(math.log(_BLAME_CHANCE) / math.log(rate_500))


def _reason(response: Response | None) -> str:
    """The server's reason on one line: a plain web server's is an HTML page of many."""
    if response is None:
        return ""
    if 200 <= response.status < 300 and is_web_page(response.body):
        return WEB_PAGE_REASON
    return " ".join(reason_of(response.body).split())
