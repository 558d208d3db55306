"""CPU per call of the sender's in-memory path, no network: the ring read vs everything after.

    python -m bench.sender_micro [--calls 100000] [--producers 2] [--target complete|upsert]
                                 [--profile eval] [--repeat 3] [--cprofile 25]

Records are written as ``Tracer.call_start`` / ``call_end`` write them (kind, flags, raw
ids, the end's splice offset as aux), one ring slot per producer, from a pool of
pre-encoded payloads of the bench profile (each call gets fresh raw ids: the sender pairs by
the header, never by the JSON). A real :class:`engine.sender._process.Sender` then runs its pump
(read → track → route → accumulate → linger cut), every ready batch is prepared as
``_deliver`` prepares it (body, counters, headers) and settled as a 200 answer settles it
(concurrency and size learning, release, counters, latency samples) -- without an event
loop or a socket, with the garbage collector set as the sender process sets it. Writing
the records is not timed.

Prints µs per call for ``RingReader.read``, routing and batching (the pump minus the read),
the per-batch send side and the settle side, and their sum after the read. Times are this
thread's CPU time, so other processes on the machine do not inflate them (they can still
slow it through shared caches: compare runs taken side by side).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import tempfile
import time
from dataclasses import dataclass

from bench.payloads import PROFILE_NAMES, profile
from engine import ring
from engine.common._config import EngineConfig
from engine.common._control import Control, control_path
from engine.common._malloc import tune_for_large_buffers
from engine.common._retry import Verdict
from engine.sender._process import Sender, tune_gc
from engine.sender._transport import Response
from engine.wire import _codec
from engine.wire.calls import (
    EndedCallSchemaForInsert,
    StartedCallSchemaForInsert,
    end_splice_offset,
)

_PROJECT = "bench-entity/bench-project"
_POOL_CALLS = 512  # distinct encoded payload pairs; the ids in the headers are fresh per call
_CHUNK_CALLS = 2000  # calls per producer written between drains (bounded by the ring)
_RING_BYTES = 32 << 20
_OK = Response(200, {}, b"{}", 0.002)


@dataclass
class Encoded:
    start: bytes
    end: bytes
    end_aux: int


@dataclass
class Times:
    read_ns: int = 0
    pump_ns: int = 0  # includes read_ns
    send_ns: int = 0
    settle_ns: int = 0

    def per_call_us(self, calls: int) -> dict[str, float]:
        route_ns = self.pump_ns - self.read_ns
        return {
            "read": self.read_ns / calls / 1e3,
            "route+batch": route_ns / calls / 1e3,
            "send side": self.send_ns / calls / 1e3,
            "settle": self.settle_ns / calls / 1e3,
            "after read": (route_ns + self.send_ns + self.settle_ns) / calls / 1e3,
        }


def encode_pool(profile_name: str) -> list[Encoded]:
    """Start and end payloads as ``Tracer.call_start`` / ``call_end`` encode them."""
    p = profile(profile_name)
    encoder = _codec.encoder
    pool = []
    for i in range(_POOL_CALLS):
        call_id, trace_id, started_at = _codec.uuid7(), _codec.uuid7(), _codec.utcnow()
        start = encoder.encode(StartedCallSchemaForInsert(
            project_id=_PROJECT, id=call_id, trace_id=trace_id, op_name=p.op_name,
            started_at=started_at, attributes=p.attributes(i), inputs=p.inputs(i)))
        end = encoder.encode(EndedCallSchemaForInsert(
            project_id=_PROJECT, id=call_id, trace_id=trace_id, started_at=started_at,
            ended_at=_codec.utcnow(), output=p.output(i), summary=p.summary(i)))
        pool.append(Encoded(start, end, end_splice_offset(end)))
    return pool


def write_calls(writers: list[ring.SlotWriter], pool: list[Encoded], calls_each: int,
                first: int) -> None:
    project = _PROJECT.encode()
    for writer in writers:
        for i in range(first, first + calls_each):
            enc = pool[i % len(pool)]
            _text, call_raw = _codec.uuid7_bytes()
            _text, trace_raw = _codec.uuid7_bytes()
            ok = writer.try_write(ring.KIND_START, 0, call_raw, trace_raw, project, enc.start, 0)
            ok = ok and writer.try_write(ring.KIND_END, ring.FLAG_END_HAS_TRACE, call_raw,
                                         trace_raw, project, enc.end, enc.end_aux)
            if not ok:
                raise RuntimeError("ring full: the bench must drain before writing more")


def make_sender(ringset: ring.RingSet, state_dir: str, target: str) -> Sender:
    Control(control_path(state_dir), ringset.spec.max_slots, create=True).close()
    cfg = EngineConfig(project=_PROJECT, target=target, compression="none",
                       ring_bytes=_RING_BYTES, max_slots=ringset.spec.max_slots,
                       dead_letter_path=os.path.join(state_dir, "dead_letters.jsonl"))
    return Sender(ringset.spec, cfg, owner_pid=os.getpid(), ring_dir=state_dir, api_key=None)


def timed_read(sender: Sender, times: Times) -> None:
    read = sender.reader.read

    def read_timed(*args: int) -> list[ring.Record]:
        started = time.thread_time_ns()
        records = read(*args)
        times.read_ns += time.thread_time_ns() - started
        return records

    sender.reader.read = read_timed


def send_and_settle(sender: Sender, times: Times) -> None:
    """Every ready batch, as ``_deliver`` prepares it and a 200 answer settles it."""
    clock = time.thread_time_ns
    while sender.ready:
        started = clock()
        batch = sender.ready.popleft()
        body = batch.body()
        if batch.first_sent_s is None:
            batch.first_sent_s = time.monotonic()
        batch.attempts += 1
        sender._count_sent(batch, len(body), len(body))
        sender._headers(batch)
        middle = clock()
        sender._settle(batch, Verdict.OK, _OK, None, len(body), 1)
        ended = clock()
        times.send_ns += middle - started
        times.settle_ns += ended - middle


def drain(sender: Sender, times: Times, everything: bool) -> None:
    clock = time.thread_time_ns
    while True:
        started = clock()
        progressed = sender._pump()
        if everything and not progressed:
            sender._add_items(sender.router.expire(0.0, everything=True))
            for batch in sender.acc.due(0.0, everything=True):
                sender._make_ready(batch)
        times.pump_ns += clock() - started
        send_and_settle(sender, times)
        if not progressed:
            return


def run_once(pool: list[Encoded], calls: int, producers: int, target: str,
             profiler: cProfile.Profile | None) -> Times:
    ringset = ring.RingSet.create(_RING_BYTES, producers)
    try:
        with tempfile.TemporaryDirectory(prefix="sender-micro-") as state_dir:
            writers = [ringset.writer() for _ in range(producers)]
            sender = make_sender(ringset, state_dir, target)
            times = Times()
            timed_read(sender, times)
            calls_each = calls // producers
            for first in range(0, calls_each, _CHUNK_CALLS):
                chunk = min(_CHUNK_CALLS, calls_each - first)
                write_calls(writers, pool, chunk, first)
                if profiler:
                    profiler.enable()
                drain(sender, times, everything=first + chunk >= calls_each)
                if profiler:
                    profiler.disable()
            check_settled(sender, ringset, calls_each * producers)
            sender.control.close()
            sender.ringset.close()
            return times
    finally:
        ringset.close()
        ringset.unlink()


def check_settled(sender: Sender, ringset: ring.RingSet, calls: int) -> None:
    heads, released = ringset.positions()
    acked = sender.control.get("items_acked")
    expected = calls if sender.router.mode == "complete" else 2 * calls
    if heads != released or acked != expected:
        raise RuntimeError(f"not all settled: heads {heads}, released {released}, "
                           f"items acked {acked} of {expected}")


def report(rows: list[dict[str, float]], args: argparse.Namespace) -> None:
    print(f"sender micro: {args.calls} calls, {args.producers} producers, profile "
          f"{args.profile}, target {args.target}, {len(rows)} runs (median, min-max)")
    print("| part | µs per call |")
    print("|---|---|")
    for key in rows[0]:
        values = [r[key] for r in rows]
        print(f"| {key} | {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f}) |")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--target", choices=("complete", "upsert"), default="complete")
    parser.add_argument("--profile", choices=PROFILE_NAMES, default="eval")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cprofile", type=int, default=0, metavar="N",
                        help="profile the drains of one more run; print the top N functions")
    args = parser.parse_args(argv)
    if args.calls < args.producers or args.producers < 1 or args.repeat < 1:
        parser.error("need --producers >= 1, --calls >= --producers, --repeat >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tune_gc()  # as the sender process does
    tune_for_large_buffers()
    pool = encode_pool(args.profile)
    calls = args.calls // args.producers * args.producers
    rows = [run_once(pool, calls, args.producers, args.target, None).per_call_us(calls)
            for _ in range(args.repeat)]
    report(rows, args)
    if args.cprofile:
        profiler = cProfile.Profile()
        run_once(pool, calls, args.producers, args.target, profiler)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.cprofile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
