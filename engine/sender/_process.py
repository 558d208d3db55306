"""The sender process: drains every ring and delivers what it holds to the trace server.

Started by :class:`engine.Engine` as ``python -m engine.sender ARGS`` (a fresh interpreter,
like multiprocessing's spawn, but without re-importing the user's ``__main__``). It runs one
uvloop event loop:

    ring records ──Router──► items ──Accumulator──► batches ──► ready queue ──► POST tasks
        ▲             (_intake: the read hot loop)                 (_delivery)     │
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
from engine.common._errors import SendError
from engine.common._malloc import tune_for_large_buffers
from engine.ring import _files as ring_files
from engine.sender._adaptive import AdaptiveConcurrency, SizeTarget
from engine.sender._batcher import Accumulator, Batch, ReleaseTracker, Router
from engine.sender._deadletter import DeadLetters
from engine.sender._delivery import Delivery
from engine.sender._intake import READ_MAX_RECORDS, Intake
from engine.sender._retry import Backoff, Verdict, classify
from engine.sender._transport import Compressor, Transport

log = logging.getLogger("engine.sender")

_HOUSEKEEPING_S = 0.1
_LATENCY_PUBLISH_S = 0.5
_LATENCY_SAMPLES = 8192
_ENVELOPE_BYTES = 64
# The data path allocates a few small tuples per record, nearly all freed by reference
# counting within a batch's life. At the default threshold (700) the cyclic collector ran
# every few hundred records and walked each in-flight item several times (~15% of the
# sender's CPU); at this one, ~5%. The sender makes few cycles (see _deliver).
_GC_GEN0_THRESHOLD = 10_000


class Sender(Intake, Delivery):
    """One sender loop; see the module docstring for the data path. Reading records into
    batches is ``Intake`` (engine/sender/_intake.py), sending them and settling each answer
    ``Delivery`` (_delivery.py); here: the state they share, the loop, timers and the end."""

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

    # -- timers, housekeeping and the end --------------------------------------------------

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
            records = self.reader.read(READ_MAX_RECORDS)
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


def _open_spool(directory: str) -> Any:
    from engine.sender._spool import Spool

    return Spool(directory)


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
