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
import contextlib
import gc
import logging
import os
import random
import signal
import sys
import time
from typing import Any

import msgspec

from engine import ring
from engine.common import _env, _logging
from engine.common._config import (
    EngineConfig,
    compression_thread_count,
    default_dead_letter_path,
    persisted_to,
    spool_path,
)
from engine.common._control import Control, control_path
from engine.common._errors import SendError
from engine.common._malloc import tune_for_large_buffers
from engine.common._retry import Backoff
from engine.sender._adaptive import AdaptiveConcurrency, SizeTarget
from engine.sender._batcher import Accumulator, Batch
from engine.sender._deadletter import DeadLetters
from engine.sender._delivery import SINGLES_PER_SLOT, SPILL_AFTER_S, Delivery
from engine.sender._intake import Intake
from engine.sender._outage import OutageLog, startup_problem
from engine.sender._persist import DEAD_COUNTERS, Persister
from engine.sender._pressure import PressureLog, bound_facts
from engine.sender._release import ReleaseTracker
from engine.sender._replay import ReplaySummary, replay_spool
from engine.sender._resend import Resender
from engine.sender._router import Router
from engine.sender._shutdown import HOUSEKEEPING_S, STOP_SIGNALS, Shutdown
from engine.sender._transport import (
    Compressor,
    Transport,
    choose_compression,
    takes_upsert_batch,
)

log = logging.getLogger("engine.sender")

_SPOOL_REPLAY_PAUSE_S = 1.0
_LATENCY_PUBLISH_S = 0.5
_LATENCY_SAMPLES = 8192
_ENVELOPE_BYTES = 64
# While a batch of at least _BULK_BYTES lingers, records are arriving in bulk: the sender
# looks at the rings every _BULK_POLL_S instead of having producers ring the doorbell for
# each record they write (a syscall in the producer, a wake-up here, for one record). After
# _BULK_EMPTY_POLLS looks in a row that found nothing, it sleeps on the doorbell again.
_BULK_BYTES = 64 << 10
_BULK_POLL_S = 0.001
_BULK_EMPTY_POLLS = 8
# The data path allocates a few small tuples per record, nearly all freed by reference
# counting within a batch's life. At the default threshold (700) the cyclic collector ran
# every few hundred records and walked each in-flight item several times (~15% of the
# sender's CPU); at this one, ~5%. The sender makes few cycles (see _deliver).
_GC_GEN0_THRESHOLD = 10_000


class Sender(Intake, Delivery, Shutdown):
    """One sender loop; see the module docstring for the data path. Reading records into
    batches is ``Intake`` (engine/sender/_intake.py), sending them and settling each answer
    ``Delivery`` (_delivery.py), stopping ``Shutdown`` (_shutdown.py); here: the state they
    share, the loop, timers and start-up."""

    def __init__(self, spec: ring.RingSpec, cfg: EngineConfig, *, owner_pid: int,
                 ring_dir: str, api_key: str | None, recovering: bool = False,
                 shard: int = 0, shards: int = 1, key_from: str | None = None) -> None:
        spool = spool_path(cfg)  # an engine's sender gets the folder it resolved, or None
        self.spool = _open_spool(spool, cfg) if spool else None
        # None when _open_spool said it cannot (dead letters instead)
        cfg = msgspec.structs.replace(cfg, spool_dir=spool if self.spool else None)
        self.cfg = cfg
        self.owner_pid = owner_pid
        self.recovering = recovering
        self.api_key = api_key
        # where the owner took the key from (never the key): our words if it is refused
        self.key_from = key_from or "$ENGINE_API_KEY or $WANDB_API_KEY"
        self.ringset = ring.RingSet.attach(spec)
        # sender ``shard`` of ``shards`` reads its slots (s % shards == shard) and writes
        # its counters into its own block of the control file
        self.reader = self.ringset.reader(shard, shards)
        self.reader.rewind()
        self.control = Control(control_path(ring_dir), spec.max_slots, sender=shard)
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
        self.single_tasks: set[asyncio.Task] = set()  # of them, v2 single requests
        self.pinned_said = 0  # router.pinned_alone at the last pressure warning
        self.fatal: BaseException | None = None
        self.compressor: Compressor | None = None
        self.executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.dead = DeadLetters(cfg.dead_letter_path or default_dead_letter_path(),
                                keep_free_bytes=cfg.disk_keep_free_bytes)
        self.persister = Persister(self.control, self.dead, self.spool, self._release)
        self.outage = OutageLog(cfg.url, _destination(cfg))
        self.last_retry_status: int | None = None
        self.spilling = False
        self.last_answer_s = time.monotonic()
        self.slowest_answer_s = 0.0
        self.silent = False
        self.taken_back: set[asyncio.Task] = set()
        self.silence_probe: asyncio.Task | None = None
        # the spool's replay, and what asks it to stop after the segment it sends (closing)
        self.spool_task: asyncio.Task | None = None
        self.spool_stop = asyncio.Event()
        self.spool_wake = asyncio.Event()  # a replay run now, not after its pause (closing)
        self.spool_started = self.spool_runs = 0  # replay runs begun, and done
        self.spool_kept = False  # the last run kept segments: the server did not take them
        self.silence_probe_s = 0.0
        self.last_ack_s = 0.0
        self.errors_500_in_a_row = 0
        self.rate_500 = 0.0
        # producers' waits for ring space at the last look (those before it started: old)
        self.full_waits_seen = self.ringset.pressure(self.reader.slots)[1]
        self.pressure = PressureLog(cfg.url)
        self.latencies_us: collections.deque[int] = collections.deque(maxlen=_LATENCY_SAMPLES)
        self.flush_seen_ns = 0  # a flush asked for before we started is honoured too
        self.flush_heads: list[int] | None = None
        self.stopping = False
        self.stop_request_seen = 0
        self.stop_deadline_s: float | None = None
        self.owner_stops = False
        self.signalled: tuple[int, float] | None = None
        self.wake: asyncio.Event | None = None
        self.empty_polls = 0  # bulk polls in a row that found nothing (see _idle)
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
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self._on_signal, signum)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked since main()
        self.control.set("sender_pid", os.getpid())
        async with Transport(self.cfg.url, api_key=self.api_key,
                             pool_size=self.cfg.max_in_flight * SINGLES_PER_SLOT + 2,
                             connect_timeout_s=self.cfg.connect_timeout_s,
                             request_timeout_s=self.cfg.request_timeout_s) as transport:
            self.transport = transport
            await self._decide_compression()
            if self.spool:
                self.spool_task = asyncio.create_task(self._replay_spool())
            next_housekeeping = 0.0
            while True:
                if self.fatal is not None:
                    raise self.fatal
                now = time.monotonic()
                if now >= next_housekeeping:
                    next_housekeeping = now + HOUSEKEEPING_S
                    if self._housekeeping():
                        break
                progressed = self._pump()
                if progressed:
                    self.empty_polls = 0
                self._dispatch()
                if not progressed:
                    await self._idle()
                    if self.control.get("shutdown_request"):
                        next_housekeeping = 0.0  # the owner's close() rang: stop now
                elif self.tasks:
                    # let the POSTs in flight run between reads: without this a request
                    # would start only when the reading pauses (rings drained or the
                    # in-flight budget full), not when its batch is ready
                    await asyncio.sleep(0)
            await self._finish()
        loop.remove_reader(self.reader.fileno())

    async def _idle(self) -> None:
        """Sleep until the doorbell, a finished request, or the next timer."""
        timeout = HOUSEKEEPING_S
        oldest = self.acc.oldest_s()
        if oldest is not None:
            timeout = min(timeout, max(0.0, oldest + self.cfg.linger_ms / 1000 - time.monotonic()))
        if self.can_dispatch():
            return
        has_room = self.held_bytes + self.acc.open_bytes < self.cfg.max_in_flight_bytes
        if (oldest is not None and self.acc.open_bytes >= _BULK_BYTES
                and self.empty_polls < _BULK_EMPTY_POLLS):
            if has_room and self.reader.pending():
                return
            self.empty_polls += 1
            timeout = min(timeout, _BULK_POLL_S)  # no flag: producers write without ringing
        elif not self.reader.prepare_sleep() and has_room:
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
        """Publish gauges, free dead producers' slots, retry parked batches; True when it
        is time to stop (see ``Shutdown._stop_due``)."""
        control = self.control
        control.set("sender_heartbeat_ns", time.monotonic_ns())
        self._publish_gauges()
        self._publish_latency()
        self._say_pressure()
        self._notice_silence()
        if self.outage.since_s is not None or self.spilling:
            self._spill_for_producers(self._producers_wait)
        for slot in self.reader.reap():
            self.tracker.forget_slot(slot)
        self._retry_parked()
        self.persister.say_repeats()
        if self.stop_deadline_s is None:
            self._stop_due()
        return self.stop_deadline_s is not None

    def _publish_gauges(self) -> None:
        control = self.control
        control.set("in_flight_requests", len(self.tasks))
        control.set("in_flight_bytes", self.held_bytes)
        control.set("concurrency_limit", self.concurrency.limit)
        control.set("size_target_bytes", self.size.bytes)
        control.set("pending_starts", self.router.held())
        self._publish_router_counts()

    def _say_pressure(self) -> None:
        """Producers waiting on (or dropping at) full rings are said while it goes on."""
        control, slots = self.control, self.reader.slots
        self.pressure.observe(control.slots_total("blocked_ms", slots),
                              control.slots_total("dropped_full", slots), self._bound_facts)

    def _producers_wait(self) -> bool:
        """Whether a producer of this sender's slots began waiting for room in its ring
        since the last look, or one has less than an eighth of its ring free (it waits, or
        soon will)."""
        room, waits = self.ringset.pressure(self.reader.slots)
        began, self.full_waits_seen = waits > self.full_waits_seen, waits
        return began or room < self.ringset.spec.ring_bytes // 8

    def _bound_facts(self) -> str:
        if self.outage.since_s is not None:  # not the round trip: the server is failing
            since = time.strftime("%H:%M:%S", time.localtime(self.outage.since_wall))
            parked = self.persister.parked_items()
            return (f"the server has failed every request since {since}; "
                    + ("what fails goes to disk at once" if self.spilling else
                       f"once it has failed for {SPILL_AFTER_S:g} s with producers waiting, "
                       "what fails goes to disk at once")
                    + (f"; {parked:,} items wait in the rings for the server: the disk cannot "
                       "take them (spool_max_bytes, disk_keep_free_bytes or a full disk, "
                       "said above)" if parked else ""))
        samples = sorted(self.latencies_us)
        pinned, self.pinned_said = self.router.pinned_alone - self.pinned_said, \
            self.router.pinned_alone
        post_s = self.concurrency.baseline_rtt_s
        return bound_facts(None if post_s is None else post_s * 1000,
                           self.concurrency.limit, self.size.bytes,
                           max(1, self.reader.active_slot_count()), self.cfg.ring_bytes,
                           pinned, samples[len(samples) // 2] / 1000 if samples else None)

    def _publish_latency(self) -> None:
        now = time.monotonic()
        if now < getattr(self, "_latency_next", 0.0) or not self.latencies_us:
            return
        self._latency_next = now + _LATENCY_PUBLISH_S
        samples = sorted(self.latencies_us)
        for name, q in (("latency_p50_us", 0.5), ("latency_p90_us", 0.9), ("latency_p99_us", 0.99)):
            self.control.set(name, samples[min(len(samples) - 1, int(q * len(samples)))])
        self.control.set("latency_max_us", samples[-1])

    # -- start-up ------------------------------------------------------------------------------

    async def _decide_compression(self) -> None:
        """Look at /server_info (a wrong URL or key is said loudly now, not found out from
        dead letters later) and compress if the server accepts zstd and is elsewhere."""
        info: object = None
        try:
            info = await self.transport.get_json("/server_info")
        except SendError as exc:
            log.log(*startup_problem(exc, url=self.cfg.url, has_key=bool(self.api_key),
                                     key_from=self.key_from))
        # starts sent before their end go in upsert batches where the server takes them;
        # elsewhere, with try_upsert_batch, a project tries them once it has calls
        # (engine/sender/_router.py)
        self.router.alone_batched = takes_upsert_batch(info)
        self.router.probe_upsert = (self.cfg.try_upsert_batch and self.cfg.target == "auto"
                                    and not self.router.alone_batched)
        setting, why = choose_compression(self.cfg.compression, info)
        log.debug("compression: %s (%s)", setting, why)
        if setting == "zstd":
            self.compressor = Compressor(self.cfg.compression_level)
            self.executor = concurrent.futures.ThreadPoolExecutor(
                compression_thread_count(self.cfg, senders=self.ringset.spec.senders),
                thread_name_prefix="engine-zstd")
        self.control.set("compressing", int(self.compressor is not None))
        self.control.set("complete_mode", int(self.router.mode == "complete"))

    async def _replay_spool(self) -> None:
        """Send spooled segments whenever the server answers, re-batched to its limit; an
        item it refuses alone is dead-lettered, so none blocks the ones behind it."""
        size = SizeTarget(self.cfg.max_request_bytes, min_bytes=self.cfg.min_request_bytes,
                          initial_bytes=self.size.bytes)
        while not self.spool_stop.is_set():
            # one per run: an end's wait for its start counts from the run's beginning (a
            # start the live path got acknowledged just before may not show yet), and the
            # bodies compressed as the live path's
            resender = Resender(self.transport, size, compressor=self.compressor,
                                executor=self.executor)
            summary = ReplaySummary()
            self.spool_started += 1
            try:
                await replay_spool(self.spool, resender, self.dead, summary, self.spool_stop)
            finally:  # cancelled too (a close out of time): what it did is counted
                self._count_spool_replay(summary)
            self.spool_runs += 1
            self.spool_kept = summary.segments_kept > 0
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.spool_wake.wait(), _SPOOL_REPLAY_PAUSE_S)
            self.spool_wake.clear()

    def _count_spool_replay(self, summary: ReplaySummary) -> None:
        self.control.add("replayed_batches", summary.segments_sent)
        self.control.add("spool_replayed_items", summary.items_delivered)
        # in the dead letters now (counted there, by reason, as the file holds them), and in
        # spooled_items already: spool_refused_items says how many are both
        self.control.add("spool_refused_items", summary.items_rejected)
        for reason, count in summary.rejected_by_reason.items():
            self.control.add("dead_letters", count)
            self.control.add(DEAD_COUNTERS[reason], count)


def _open_spool(directory: str, cfg: EngineConfig) -> Any:
    """The spool in ``directory``; None, said once, if it cannot be used (the Engine checked
    it at start, but a recovery sender may find it gone, or the disk full): a sender that
    crashed on it would be restarted only to crash again, delivering nothing."""
    from engine.sender._spool import Spool

    try:
        # the engine made a folder it was given
        return Spool(directory, max_bytes=cfg.spool_max_bytes,
                     keep_free_bytes=cfg.disk_keep_free_bytes, create=False)
    except OSError as exc:
        log.error("cannot use spool_dir %s (%s): what is not delivered goes to the dead "
                  "letters instead", directory, exc.strerror or exc)
        return None


def _destination(cfg: EngineConfig) -> str:
    return (f"a batch not delivered within delivery_deadline_s={cfg.delivery_deadline_s:g} s "
            f"goes to {persisted_to(cfg)}" + ("" if cfg.spool_dir else " (no spool)"))


def tune_gc() -> None:
    """Collect cycles less often (see ``_GC_GEN0_THRESHOLD``); the sender process calls it."""
    gc.set_threshold(_GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        with open(argv[0], "rb") as args_file:  # written by the Engine (its ring dir, 0600)
            args = msgspec.json.decode(args_file.read())
    except FileNotFoundError:
        # its engine closed and freed the ring set before this sender read its arguments
        # (started as the engine closed, then held up: a SIGSTOP, a loaded machine); a ring
        # set with anything left in it keeps this file, so there is nothing to do. Before:
        # a FileNotFoundError traceback in the program's log (process chaos seed 81)
        _logging.setup()
        log.info("%s is gone: its engine closed and freed the ring set; nothing to do",
                 argv[0])
        return 0
    # held back, not lost, until the loop handles them (Sender.run)
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    tune_for_large_buffers()  # bodies of megabytes, reused warm instead of fresh mmaps
    _logging.setup()  # the owner's ENGINE_LOG_FORMAT / ENGINE_LOG_LEVEL, else text at WARNING
    spec = msgspec.convert(args["spec"], ring.RingSpec)
    cfg = msgspec.convert(args["config"], EngineConfig)
    recovering = "--recover" in argv[1:]
    # a recovery reads every slot; otherwise sender --shard K of the ring set's senders
    shard = int(argv[argv.index("--shard") + 1]) if "--shard" in argv[1:] else 0
    shards = 1 if recovering else spec.senders
    # held until we exit, however we exit: nobody recovers a ring set we read
    reader_locks = _inherited_locks(argv[1:]) or (
        ring.take_reader_locks(args["ring_dir"], spec.senders) if recovering
        else ring.take_reader_lock(args["ring_dir"], shard))
    if reader_locks is None:
        log.info("ring set %s already has a sender for these slots; nothing to do",
                 spec.shm_name)
        return 0
    # past a file-size limit a write fails with EFBIG (handled: the items stay in the
    # ring) instead of the signal killing us with everything unsettled
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    tune_gc()
    sender = Sender(spec, cfg, owner_pid=args["owner_pid"], ring_dir=args["ring_dir"],
                    api_key=os.environ.pop(_env.SENDER_API_KEY, None),
                    key_from=os.environ.pop(_env.SENDER_KEY_FROM, None),
                    recovering=recovering, shard=shard, shards=shards)
    _run(sender.run())
    # stopped on a signal to us alone: say so (the owner starts another sender)
    return 128 + sender.signalled[0] if sender.signalled and not sender.owner_stops else 0


def _inherited_locks(flags: list[str]) -> list[int] | None:
    """The reader locks our spawner took for us (``--lock-fd=N[,M...]``, see
    ring.spawn_sender): one for a shard's sender, every shard's for a recovery."""
    for flag in flags:
        if flag.startswith("--lock-fd="):
            return [int(fd) for fd in flag.removeprefix("--lock-fd=").split(",")]
    return None


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
