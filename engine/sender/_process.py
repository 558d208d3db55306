"""The sender process: drains every ring and delivers what it holds to the trace server.

Started by :class:`engine.Engine` as ``python -m engine.sender ARGS`` (a fresh interpreter,
like multiprocessing's spawn, but without re-importing the user's ``__main__``). It runs one
uvloop event loop:

    ring records ──Router──► items ──Accumulator──► batches ──► ready queue ──► POST tasks
        ▲                                                                         │
        └──────────── release ◄── ReleaseTracker ◄── ack / dead-letter / spool ◄──┘

A record's ring space is released only once the batch holding it is settled, so a sender
that crashes loses nothing: the owner restarts it and it re-reads from the release positions
(the server's idempotent upsert absorbs the repeats).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import gc
import logging
import os
import random
import sys
import time
from typing import Any

import msgspec

from engine import ring
from engine.common._config import EngineConfig, default_state_dir
from engine.common._control import Control, control_path
from engine.common._errors import EngineError, SendError
from engine.common._malloc import tune_for_large_buffers
from engine.ring import _files as ring_files
from engine.sender._adaptive import AdaptiveConcurrency, SizeTarget
from engine.sender._batcher import (
    UPSERT_ROUTE,
    Accumulator,
    Batch,
    Item,
    ReleaseTracker,
    Router,
)
from engine.sender._deadletter import DeadLetters
from engine.sender._retry import Backoff, Verdict, classify, retry_after_s
from engine.sender._transport import Compressor, Response, Transport
from engine.wire._codec import uuid_text

log = logging.getLogger("engine.sender")

_HOUSEKEEPING_S = 0.1
_LATENCY_PUBLISH_S = 0.5
_LATENCY_SAMPLES = 8192
_READ_MAX_RECORDS = 2048
_ENVELOPE_BYTES = 64
_CAPABILITIES = "trace_id_on_end,eval_child_meta"
# The data path allocates a few small tuples per record, nearly all freed by reference
# counting within a batch's life. At the default threshold (700) the cyclic collector ran
# every few hundred records and walked each in-flight item several times (~15% of the
# sender's CPU); at this one, ~5%. The sender makes few cycles (see _deliver).
_GC_GEN0_THRESHOLD = 10_000



class Sender:
    """One sender loop; see the module docstring for the data path."""

    def __init__(self, spec: ring.RingSpec, cfg: EngineConfig, *, owner_pid: int,
                 ring_dir: str, api_key: str | None) -> None:
        self.cfg = cfg
        self.owner_pid = owner_pid
        self.api_key = api_key
        self.ringset = ring.RingSet.attach(spec)
        self.reader = self.ringset.reader()
        self.reader.rewind()
        self.control = Control(control_path(ring_dir), spec.max_slots)
        self.tracker = ReleaseTracker(self.reader.release)
        mode = "upsert" if cfg.target == "upsert" else "complete"
        self.router = Router(mode, cfg.max_request_bytes - _ENVELOPE_BYTES)
        self._read_spliced(mode)
        self.acc = Accumulator()
        self.size = SizeTarget(cfg.max_request_bytes, min_bytes=cfg.min_request_bytes,
                               initial_bytes=cfg.initial_request_bytes)
        self.concurrency = AdaptiveConcurrency(initial=cfg.initial_in_flight,
                                               maximum=cfg.max_in_flight)
        self.backoff = Backoff(initial_ms=cfg.backoff_initial_ms, max_ms=cfg.backoff_max_ms)
        self.rng = random.Random()
        self.ready: collections.deque[Batch] = collections.deque()
        self.waiting: dict[Batch, asyncio.TimerHandle] = {}  # sleeping before a retry
        self.held_bytes = 0  # bytes of batches ready, waiting or in flight
        self.tasks: dict[asyncio.Task, Batch] = {}  # POSTs in flight
        self.fatal: BaseException | None = None
        self.compressor: Compressor | None = None
        self.executor: concurrent.futures.ThreadPoolExecutor | None = None
        state = default_state_dir()
        self.dead = DeadLetters(cfg.dead_letter_path or state / "dead_letters.jsonl")
        self.spool = _open_spool(cfg.spool_dir) if cfg.spool_dir else None
        self.latencies_us: collections.deque[int] = collections.deque(maxlen=_LATENCY_SAMPLES)
        self.flush_seen_ns = 0  # a flush asked for before we started is honoured too
        self.flush_heads: list[int] | None = None
        self.stopping = False
        self.wake: asyncio.Event | None = None
        self.transport: Transport | None = None

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Read, route, batch, dispatch; sleep on the doorbell when there is nothing to do.

        One long loop on purpose: every step must see the same in-memory state without
        locks, and each pass is bounded (one read of at most a few thousand records).
        """
        self.wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_reader(self.reader.fileno(), self._on_doorbell)
        self.control.set("sender_pid", os.getpid())
        async with Transport(self.cfg.url, api_key=self.api_key,
                             pool_size=self.cfg.max_in_flight + 2,
                             connect_timeout_s=self.cfg.connect_timeout_s,
                             request_timeout_s=self.cfg.request_timeout_s) as transport:
            self.transport = transport
            await self._decide_compression()
            spool_task = asyncio.create_task(self._replay_spool()) if self.spool else None
            next_housekeeping = 0.0
            while True:
                if self.fatal is not None:
                    raise self.fatal
                now = time.monotonic()
                if now >= next_housekeeping:
                    next_housekeeping = now + _HOUSEKEEPING_S
                    if self._housekeeping():
                        break
                progressed = self._pump()
                self._dispatch()
                if not progressed:
                    await self._idle()
                elif self.tasks:
                    # let the POSTs in flight run between reads: without this a request
                    # would start only when the reading pauses (rings drained or the
                    # in-flight budget full), not when its batch is ready
                    await asyncio.sleep(0)
            await self._finish()
            if spool_task is not None:
                spool_task.cancel()
        loop.remove_reader(self.reader.fileno())

    def _pump(self) -> bool:
        """Read a chunk of records into batches; True if anything was read."""
        read_any = False
        if self.held_bytes + self.acc.open_bytes < self.cfg.max_in_flight_bytes:
            records = self.reader.read(_READ_MAX_RECORDS)
            if records:
                read_any = True
                self._route_records(records)
        flushing = self._flushing()
        linger_s = 0.0 if flushing else self.cfg.linger_ms / 1000
        if self.router.held() and (flushing or read_any or self._eager_due()):
            self._add_items(self.router.expire(self.cfg.eager_start_ms / 1000,
                                               self.tracker.read_pos, self.cfg.ring_bytes // 2,
                                               flushing))
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

    def _dispatch(self) -> None:
        while self.ready and len(self.tasks) < self.concurrency.limit:
            batch = self.ready.popleft()
            if (len(batch) > 1 and batch.size_bytes > self.size.bytes
                    and batch.target_bytes != self.size.probing_bytes):
                # made before a 413 taught us a lower target: don't upload what will fail
                pieces = batch.chunks(self.size.bytes)
                self.held_bytes += sum(p.size_bytes for p in pieces) - batch.size_bytes
                self.ready.extendleft(reversed(pieces))
                continue
            task = asyncio.create_task(self._deliver(batch))
            self.tasks[task] = batch
            task.add_done_callback(self._task_done)

    async def _idle(self) -> None:
        """Sleep until the doorbell, a finished request, or the next timer."""
        timeout = _HOUSEKEEPING_S
        oldest = self.acc.oldest_s()
        if oldest is not None:
            timeout = min(timeout, max(0.0, oldest + self.cfg.linger_ms / 1000 - time.monotonic()))
        if self.ready and len(self.tasks) < self.concurrency.limit:
            return
        has_room = self.held_bytes + self.acc.open_bytes < self.cfg.max_in_flight_bytes
        if not self.reader.prepare_sleep() and has_room:
            return  # data is waiting and we have room for it
        self.wake.clear()
        try:
            await asyncio.wait_for(self.wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            self.reader.clear_doorbell()

    def _on_doorbell(self) -> None:
        self.reader.clear_doorbell()
        self.wake.set()

    def _task_done(self, task: asyncio.Task) -> None:
        self.tasks.pop(task, None)
        if not task.cancelled() and task.exception() is not None and self.fatal is None:
            self.fatal = task.exception()
        self.wake.set()

    # -- delivering one batch -----------------------------------------------------------

    async def _deliver(self, batch: Batch) -> None:
        body = batch.body()
        wire = body
        encoding = None
        if self.compressor is not None:
            wire = await self.compressor.compress_async(body, self.executor)
            encoding = "zstd"
        if batch.first_sent_s is None:
            batch.first_sent_s = time.monotonic()
        batch.attempts += 1
        in_flight = len(self.tasks)
        self._count_sent(batch, len(body), len(wire))
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
        self._settle(batch, verdict, response, error, len(body), in_flight)

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
        if verdict is Verdict.OK:
            self.concurrency.on_response(rtt_s, overloaded=False, in_flight=in_flight)
            self.size.on_success(raw_bytes)
            self._acknowledge(batch, raw_bytes)
        elif verdict is Verdict.SPLIT_413:
            self.control.add("rejected_bytes_413", raw_bytes)
            self.size.on_413(raw_bytes)
            self._split(batch, "splits_413", "too_large", status, response)
        elif verdict is Verdict.SPLIT_422:
            self._split(batch, "splits_422", "invalid", status, response)
        elif verdict is Verdict.RETRY:
            overloaded = status in (429, 503) or response is None
            self.concurrency.on_response(rtt_s, overloaded=overloaded, in_flight=in_flight)
            self._retry_later(batch, response, error)
        elif verdict is Verdict.COMPLETE_MODE_REQUIRED:
            self._switch_mode("complete")
        elif status == 404 and self.cfg.target == "auto" and self.router.mode == "complete":
            self._switch_mode("upsert")
        else:
            self._dead_letter(batch, "http", status, _reason(response))
        self._publish_gauges()

    def _acknowledge(self, batch: Batch, raw_bytes: int) -> None:
        self.held_bytes -= batch.size_bytes
        self.tracker.ack(batch.refs())
        self.control.add("items_acked", len(batch))
        self.control.add("bytes_acked", raw_bytes)
        self.control.add("batches_acked")
        now_ns = time.monotonic_ns()
        step = max(1, len(batch) // 64)
        for item in batch.items[::step]:
            self.latencies_us.append((now_ns - item.enqueue_ns) // 1000)

    def _split(self, batch: Batch, counter: str, reason: str, status: int | None,
               response: Response | None) -> None:
        if len(batch) == 1:
            self._dead_letter(batch, reason, status, _reason(response))
            return
        self.control.add(counter)
        pieces = batch.chunks(self.size.bytes) if reason == "too_large" else batch.halves()
        self.held_bytes += sum(p.size_bytes for p in pieces) - batch.size_bytes
        self.ready.extendleft(reversed(pieces))

    def _retry_later(self, batch: Batch, response: Response | None, error: SendError | None) -> None:
        elapsed_s = time.monotonic() - batch.first_sent_s
        if elapsed_s >= self.cfg.delivery_deadline_s or self.stopping:
            what = f"HTTP {response.status}" if response else str(error)
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
        """A batch past its deadline: spool it if we can, else dead-letter it."""
        if self.spool is not None:
            try:
                self.spool.put(batch.route, batch.body(), len(batch))
            except (OSError, EngineError) as exc:  # full or unwritable: the dead letters keep it
                detail = f"{detail}; spool refused it: {exc}"
            else:
                self.control.add("spooled_batches")
                self.control.add("spooled_items", len(batch))
                self.held_bytes -= batch.size_bytes
                self.tracker.ack(batch.refs())
                return
        self._dead_letter(batch, reason, status, detail)

    def _dead_letter(self, batch: Batch, reason: str, status: int | None, detail: str) -> None:
        for item in batch.items:
            self.dead.add(reason=f"{reason}: {detail}" if detail else reason, status=status,
                          call_id=_call_id_text(item), route=batch.route,
                          project=item.project.decode(), item_json=item.data)
        log.error("dead-lettered %d items (%s, HTTP %s): %s", len(batch), reason, status, detail)
        self.control.add("dead_letters", len(batch))
        self.control.add(_DEAD_COUNTERS.get(reason, "dead_http"), len(batch))
        self.held_bytes -= batch.size_bytes
        self.tracker.ack(batch.refs())

    def _dead_record(self, record: ring.Record, ref: int, detail: str) -> None:
        """A record no route can carry: dead-letter it as it is, never crash on it."""
        self.dead.add(reason=f"unroutable: {detail}", status=None, call_id=None, route="",
                      project=record.project.decode(errors="replace"),
                      item_json=record.payload if _is_json(record.payload) else b"null")
        self.control.add("dead_letters")
        self.control.add("dead_invalid")
        self.tracker.ack((ref,))

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
        for timer in self.waiting.values():
            timer.cancel()
        self.waiting.clear()
        self.ready.clear()
        self.acc = Accumulator()
        self.router = Router(mode, self.router.max_item_bytes)
        self._read_spliced(mode)
        self.tracker = ReleaseTracker(self.reader.release)
        self.held_bytes = 0
        self.reader.rewind()
        self.control.set("complete_mode", int(mode == "complete"))

    def _read_spliced(self, mode: str) -> None:
        """In complete mode the reader splices a start and its adjacent end itself (in C)."""
        self.reader.splice_max_bytes = self.router.max_item_bytes if mode == "complete" else 0

    def _count_sent(self, batch: Batch, raw_bytes: int, wire_bytes: int) -> None:
        control = self.control
        control.add("requests_sent")
        control.add("bytes_sent_raw", raw_bytes)
        control.add("bytes_sent_wire", wire_bytes)
        if batch.attempts == 1:
            control.add("batches_sent")
            control.add("items_sent", len(batch))

    # -- timers, housekeeping and the end --------------------------------------------------

    def _flushing(self) -> bool:
        """A flush request makes everything read so far go out now (no linger, no holding)."""
        requested = self.control.get("flush_request_ns")
        if requested != self.flush_seen_ns:
            self.flush_seen_ns = requested
            self.flush_heads = self.reader.heads()
        if self.flush_heads is None:
            return False
        read = self.tracker.read_pos
        if all(read.get(slot, 0) >= head for slot, head in enumerate(self.flush_heads) if head):
            caught_up = not self.reader.pending()
            if caught_up:
                self.flush_heads = None
            return True
        return True

    def _eager_due(self) -> bool:
        oldest = self.router.oldest_pending_s()
        return oldest is not None and time.monotonic() - oldest >= self.cfg.eager_start_ms / 1000

    def _housekeeping(self) -> bool:
        """Publish gauges, free dead producers' slots; True when it is time to stop."""
        control = self.control
        control.set("sender_heartbeat_ns", time.monotonic_ns())
        self._publish_gauges()
        self._publish_latency()
        for slot in self.reader.reap():
            self.tracker.forget_slot(slot)
        if control.get("shutdown_request"):
            return True
        if not _owner_alive(self.owner_pid):
            log.warning("engine owner %d is gone; draining the rings and exiting", self.owner_pid)
            return True
        return False

    def _publish_gauges(self) -> None:
        control = self.control
        control.set("in_flight_requests", len(self.tasks))
        control.set("in_flight_bytes", self.held_bytes)
        control.set("concurrency_limit", self.concurrency.limit)
        control.set("size_target_bytes", self.size.bytes)
        control.set("pending_starts", self.router.held())
        control.set("eager_starts", self.router.eager_starts)
        control.set("completes_spliced", self.router.spliced)

    def _publish_latency(self) -> None:
        now = time.monotonic()
        if now < getattr(self, "_latency_next", 0.0) or not self.latencies_us:
            return
        self._latency_next = now + _LATENCY_PUBLISH_S
        samples = sorted(self.latencies_us)
        for name, q in (("latency_p50_us", 0.5), ("latency_p90_us", 0.9), ("latency_p99_us", 0.99)):
            self.control.set(name, samples[min(len(samples) - 1, int(q * len(samples)))])
        self.control.set("latency_max_us", samples[-1])

    async def _finish(self) -> None:
        """Stop: on the owner's request at once (it already flushed as long as it wanted);
        when the owner died, after draining the rings for up to shutdown_timeout_s. What is
        still undelivered then is settled durably, never dropped."""
        orphaned = not _owner_alive(self.owner_pid)
        deadline = time.monotonic() + (self.cfg.shutdown_timeout_s if orphaned else 0.0)
        self.flush_heads = self.reader.heads()
        while time.monotonic() < deadline:
            progressed = self._pump()
            self._dispatch()
            if not (progressed or self.ready or self.tasks or self.waiting
                    or self.acc.open or self.router.held()):
                break
            if not progressed:
                await self._idle()
        self.stopping = True
        in_flight = dict(self.tasks)
        for task in in_flight:
            task.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)
        for batch in in_flight.values():
            self.ready.appendleft(batch)
        for batch, timer in list(self.waiting.items()):
            timer.cancel()
            self.ready.appendleft(batch)
        self.waiting.clear()
        self._settle_leftovers()
        if orphaned:
            self.ringset.unlink()

    def _settle_leftovers(self) -> None:
        """At exit nothing may vanish: every unacknowledged record is spooled or dead-lettered."""
        while True:
            records = self.reader.read(_READ_MAX_RECORDS)
            if not records:
                break
            self._route_records(records)
        self._add_items(self.router.expire(0.0, everything=True))
        for batch in self.acc.due(0.0, everything=True):
            self._make_ready(batch)
        leftovers = list(self.ready)
        self.ready.clear()
        for batch in leftovers:
            self._give_up(batch, "shutdown", None, "engine closed before delivery")

    # -- start-up ------------------------------------------------------------------------------

    async def _decide_compression(self) -> None:
        setting = self.cfg.compression
        if setting == "auto":
            try:
                accepts = await self.transport.server_accepts()
            except SendError:
                accepts = frozenset()
            setting = "zstd" if "zstd" in accepts else "none"
        if setting == "zstd":
            self.compressor = Compressor(self.cfg.compression_level)
            self.executor = concurrent.futures.ThreadPoolExecutor(
                self.cfg.compression_threads, thread_name_prefix="engine-zstd")
        self.control.set("compressing", int(self.compressor is not None))
        self.control.set("complete_mode", int(self.router.mode == "complete"))

    async def _replay_spool(self) -> None:
        """Send spooled batches oldest first whenever the server answers."""
        while True:
            for entry in self.spool.pending():
                route, body = self.spool.load(entry)
                try:
                    response = await self.transport.post(route, body)
                except SendError:
                    break
                if 200 <= response.status < 300:
                    self.spool.done(entry)
                    self.control.add("replayed_batches")
                elif classify(response.status, response.body) is not Verdict.RETRY:
                    log.error("spooled batch %s rejected with HTTP %d; kept in the spool",
                              entry, response.status)
                    break
                else:
                    break
            await asyncio.sleep(1.0)


_DEAD_COUNTERS = {
    "too_large": "dead_too_large",
    "invalid": "dead_invalid",
    "http": "dead_http",
    "deadline": "dead_deadline",
    "shutdown": "dead_shutdown",
}


def _reason(response: Response | None) -> str:
    if response is None:
        return ""
    try:
        data = msgspec.json.decode(response.body)
    except msgspec.DecodeError:
        return response.body[:200].decode("utf-8", "replace")
    if isinstance(data, dict):
        return str(data.get("reason") or data.get("detail") or data)[:500]
    return str(data)[:500]


def _call_id_text(item: Item) -> str | None:
    return uuid_text(item.call_id) if any(item.call_id) else None


def _open_spool(directory: str) -> Any:
    from engine.sender._spool import Spool

    return Spool(directory)


def _is_json(data: bytes) -> bool:
    try:
        msgspec.json.decode(data)
    except msgspec.DecodeError:
        return False
    return True


def _owner_alive(owner_pid: int) -> bool:
    """The owner is gone once we were reparented (that happens at its exit, before anyone
    reaps it) or it is a zombie or no longer exists."""
    if os.getppid() != owner_pid:
        return False
    return ring_files.process_start_ticks(owner_pid) is not None


def tune_gc() -> None:
    """Collect cycles less often (see ``_GC_GEN0_THRESHOLD``); the sender process calls it."""
    gc.set_threshold(_GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = msgspec.json.decode(argv[0])
    tune_for_large_buffers()  # bodies of megabytes, reused warm instead of fresh mmaps
    logging.basicConfig(level=os.environ.get("ENGINE_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s engine-sender[%(process)d] %(levelname)s %(message)s")
    spec = msgspec.convert(args["spec"], ring.RingSpec)
    cfg = msgspec.convert(args["config"], EngineConfig)
    tune_gc()
    sender = Sender(spec, cfg, owner_pid=args["owner_pid"], ring_dir=args["ring_dir"],
                    api_key=os.environ.pop("ENGINE_SENDER_API_KEY", None))
    _run(sender.run())
    return 0


def _run(coro: Any) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a core dependency on POSIX
        asyncio.run(coro)
        return
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(coro)
    else:  # pragma: no cover
        uvloop.install()
        asyncio.run(coro)


if __name__ == "__main__":
    raise SystemExit(main())
