"""The sender process at full load: CPU per call while it drains rings that are already full.

    python -m bench.sender_drain [--calls 100000] [--producers 2] [--compression none,zstd]
                                 [--sink count] [--repeat 3]

End to end (``python -m bench --scenarios matrix``) the sender works at the rate the box's
two cores let the producers and the sink go, often waking for a few records: its CPU per
call there includes the cost of waking up. This bench asks what one call costs it when it
never waits: an Engine is made without its sender, producer processes (fork) fill their ring
slots with eval calls (``call_start`` + ``call_end`` of wire Structs) and exit, then the
sender processes start and deliver everything to a fresh sink. Reported per run: the
senders' CPU per call (``/proc``, from their start to the flush), the calls per second of
one core that makes (1e6 / µs), the sink's CPU per call, and the wall-clock drain rate
(bounded by whichever of sender and sink is slower on this box). The rings are sized to
hold every call, so the sender meets each ring page for the first time (a page fault the
steady state, reusing its rings, does not pay): a little more than a long run costs.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from typing import Any

from bench import harness
from bench.contenders.engine_driver import _trace_function, process_cpu_s
from bench.peers import _run
from engine import Engine

_PROFILE = "eval"
_CALL_RING_BYTES = 9000  # ring bytes one eval call takes (start + end records, headers)


def _fill(tracer: Any, calls: int, first: int) -> None:
    payloads = _run.pregenerate(_PROFILE, calls, min(calls, 2000))
    trace_one = _trace_function(tracer, "startend", _PROFILE, harness.PROJECT, payloads)
    for i in range(first, first + calls):
        trace_one(i)
    tracer.close()


def _sender_pids(eng: Engine, deadline: float) -> list[int]:
    while time.monotonic() < deadline:
        pid = int(eng.stats().get("sender_pid", 0))
        if pid:
            return [pid]
        time.sleep(0.001)
    raise RuntimeError("no sender came up")


def drain_once(calls: int, producers: int, compression: str, sink_kind: str) -> dict[str, float]:
    each = calls // producers
    ring_bytes = -(-(each * _CALL_RING_BYTES + (1 << 20)) // 4096) * 4096
    with harness.sink(sink_kind) as s, tempfile.TemporaryDirectory(prefix="drain-") as work, \
            Engine(url=s.url, project=harness.PROJECT, compression=compression,
                   start_sender=False, ring_bytes=ring_bytes, max_slots=max(4, producers),
                   dead_letter_path=f"{work}/dead.jsonl") as eng:
        ctx = multiprocessing.get_context("fork")
        procs = [ctx.Process(target=_fill, args=(eng.producer(), each, k * each))
                 for k in range(producers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        sink_cpu0 = s.cpu_s()
        began = time.perf_counter()
        eng._sender_args = eng._write_sender_args()  # the sender, started now
        eng._start_sender()
        pids = _sender_pids(eng, time.monotonic() + 60)
        # from here: its interpreter's start-up is not the calls' (it publishes its pid
        # as its loop starts; what it drained before this poll saw it is left out too)
        sender_cpu0 = sum(process_cpu_s(pid) for pid in pids)
        if not eng.flush(timeout_s=300):
            raise RuntimeError("the sender did not deliver everything within 300 s")
        drained_s = time.perf_counter() - began
        sender_cpu_s = sum(process_cpu_s(pid) for pid in pids) - sender_cpu0
        sink_cpu_s = s.cpu_s() - sink_cpu0
        received = s.calls_received()
    n = each * producers
    if received < n:
        raise RuntimeError(f"the sink has {received} of {n} calls")
    sender_us = sender_cpu_s / n * 1e6
    return {"sender_cpu_us_per_call": sender_us, "calls_per_core_s": 1e6 / sender_us,
            "sink_cpu_us_per_call": sink_cpu_s / n * 1e6, "drain_calls_per_s": n / drained_s}


def _cell(runs: list[dict[str, float]], key: str, digits: int) -> str:
    values = [r[key] for r in runs]
    return (f"{statistics.median(values):,.{digits}f} "
            f"({min(values):,.{digits}f}-{max(values):,.{digits}f})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--compression", default="none,zstd")
    parser.add_argument("--sink", choices=harness.SINKS, default="count")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"sender drain: {args.calls} eval calls from {args.producers} full ring slots into "
          f"the {args.sink} sink; medians of {args.repeat} (min-max)")
    print("| compression | sender CPU µs/call | calls/s per sender core | sink CPU µs/call | "
          "drain calls/s (wall) |")
    print("|---|---:|---:|---:|---:|")
    for compression in args.compression.split(","):
        runs = [drain_once(args.calls, args.producers, compression, args.sink)
                for _ in range(args.repeat)]
        print(f"| {compression} | {_cell(runs, 'sender_cpu_us_per_call', 2)} | "
              f"{_cell(runs, 'calls_per_core_s', 0)} | {_cell(runs, 'sink_cpu_us_per_call', 1)} | "
              f"{_cell(runs, 'drain_calls_per_s', 0)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
