"""Contender driver: the engine, timed on the same payloads and JSON line as the peer drivers.

    python -m bench.contenders.engine_driver --url URL --calls N --profile eval \
        --mode startend|dicts|ctx --producers P --compression none|zstd

One :class:`engine.Engine` in this process (it starts the sender process); ``P`` producer
processes made by fork share the ``N`` calls and trace them as fast as they can:

- ``startend``: ``tracer.call_start`` + ``tracer.call_end`` with the wire Structs;
- ``dicts``: the same two calls with plain dicts (what a weave-shaped caller hands over);
- ``dicts-iso``: dicts whose timestamps are ISO-8601 strings (``datetime.isoformat()``), as
  a caller holding JSON-shaped data has them;
- ``ctx``: the ``tracer.call(...)`` context manager (ids, parent, timestamps filled in).

Each producer builds its own payloads before the clock starts, as every peer driver does:
pages inherited from the owner would be copied on the first refcount write (a fork's
copy-on-write, paid by whichever code touches the data first; in an eval, the program
that built it). Each producer measures its own CPU with ``getrusage`` around its loop (a forked producer is
single-threaded, so process CPU is what the traced program pays). The owner then waits for
``eng.flush`` and reads ``eng.stats()``: bytes raw and on the wire, enqueue-to-ack latency,
and the peak RSS (``VmHWM``) of the owner, every producer and the sender. Prints one JSON
line: the fields of ``bench.peers._run.Report`` plus the engine's own.
"""

from __future__ import annotations

import argparse
import glob
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from bench.payloads import PROFILE_NAMES, profile
from bench.peers import _run
from engine import Engine
from engine.producer._tracer import Tracer
from engine.wire._codec import utcnow, uuid7
from engine.wire.calls import EndedCallSchemaForInsert, StartedCallSchemaForInsert

MODES = ("startend", "dicts", "dicts-iso", "ctx")
_START_TIMEOUT_S = 60.0


@dataclass
class EngineReport(_run.Report):
    """The peers' report plus what only the engine can tell (from ``eng.stats()``)."""

    producers: int = 1
    compression: str = "none"
    producer_cpu_us_per_call: list[float] = field(default_factory=list)
    producer_peak_rss_kib: list[int] = field(default_factory=list)
    sender_peak_rss_kib: int | None = None
    senders: int = 1
    # the driver's own share of producer CPU (building items, ids, times; see _NullTracer)
    driver_cpu_us_per_call: float | None = None
    sender_cpu_us_per_call: float | None = None  # the sender process, from /proc
    items_acked: int = 0
    bytes_sent_raw: int = 0
    bytes_sent_wire: int = 0
    bytes_acked: int = 0
    rejected_bytes_413: int = 0
    splits_413: int = 0
    retries: int = 0
    dead_letters: int = 0
    dropped_full: int = 0
    latency_p50_us: int = 0
    latency_p90_us: int = 0
    latency_p99_us: int = 0
    latency_max_us: int = 0
    mb_per_s_raw: float | None = None
    mb_per_s_wire: float | None = None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="trace server base URL (loopback)")
    parser.add_argument("--calls", type=int, required=True, help="calls to trace, all producers")
    parser.add_argument("--profile", choices=PROFILE_NAMES, default="eval")
    parser.add_argument("--mode", choices=MODES, default=MODES[0])
    parser.add_argument("--project", default=_run.DEFAULT_PROJECT, help="entity/project")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="give up after this")
    parser.add_argument("--count-url", help="as for the peer drivers (engine serve's /stats)")
    parser.add_argument("--producers", type=int, default=1, help="producer processes (fork)")
    parser.add_argument("--compression", choices=("none", "zstd"), default="none")
    parser.add_argument("--senders", default="auto", help="sender processes (or auto)")
    parser.add_argument("--distinct-payloads", type=int, default=_run.MAX_DISTINCT_PAYLOADS,
                        help="payloads the calls cycle through (small: data in cache)")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.producers < 1 or args.distinct_payloads < 1:
        parser.error("--calls, --producers and --distinct-payloads must be at least 1")
    if args.project.count("/") != 1:
        parser.error(f"--project must be 'entity/project', got {args.project!r}")
    return args


# ---- the producer processes ----------------------------------------------------------------


def _trace_function(tracer: Tracer, mode: str, profile_name: str, project_id: str,
                    payloads: list[_run.Payload]) -> Any:
    op_name = profile(profile_name).op_name

    def trace_structs(i: int) -> None:
        payload = payloads[i % len(payloads)]
        call_id, trace_id, started_at = uuid7(), uuid7(), utcnow()
        tracer.call_start(StartedCallSchemaForInsert(
            project_id=project_id, id=call_id, trace_id=trace_id, op_name=op_name,
            started_at=started_at, attributes=payload.attributes, inputs=payload.inputs))
        tracer.call_end(EndedCallSchemaForInsert(
            project_id=project_id, id=call_id, trace_id=trace_id, started_at=started_at,
            ended_at=utcnow(), output=payload.output, summary=payload.summary))

    def trace_dicts(i: int) -> None:
        payload = payloads[i % len(payloads)]
        call_id, trace_id, started_at = uuid7(), uuid7(), utcnow()
        tracer.call_start({"project_id": project_id, "id": call_id, "trace_id": trace_id,
                           "op_name": op_name, "started_at": started_at,
                           "attributes": payload.attributes, "inputs": payload.inputs})
        tracer.call_end({"project_id": project_id, "id": call_id, "trace_id": trace_id,
                         "started_at": started_at, "ended_at": utcnow(),
                         "output": payload.output, "summary": payload.summary})

    def trace_dicts_iso(i: int) -> None:
        payload = payloads[i % len(payloads)]
        call_id, trace_id, started_at = uuid7(), uuid7(), utcnow().isoformat()
        tracer.call_start({"project_id": project_id, "id": call_id, "trace_id": trace_id,
                           "op_name": op_name, "started_at": started_at,
                           "attributes": payload.attributes, "inputs": payload.inputs})
        tracer.call_end({"project_id": project_id, "id": call_id, "trace_id": trace_id,
                         "started_at": started_at, "ended_at": utcnow().isoformat(),
                         "output": payload.output, "summary": payload.summary})

    def trace_ctx(i: int) -> None:
        payload = payloads[i % len(payloads)]
        with tracer.call(op_name, inputs=payload.inputs, attributes=payload.attributes) as call:
            call.output = payload.output
            call.summary = payload.summary

    return {"startend": trace_structs, "dicts": trace_dicts, "dicts-iso": trace_dicts_iso,
            "ctx": trace_ctx}[mode]


class _NullTracer:
    """Takes the items and does nothing: the driver's own cost per call (ids, timestamps,
    building the Structs or dicts), measured apart so it can be told from the engine's."""

    def call_start(self, start: Any) -> None:
        return None

    def call_end(self, end: Any) -> None:
        return None


_CALIBRATION_CALLS = 20_000


def driver_cpu_us_per_call(args: argparse.Namespace, payloads: list[_run.Payload]) -> float | None:
    """CPU µs per call of the driver's loop with a tracer that does nothing (None for
    ``ctx``, whose handle is the engine's own)."""
    if args.mode == "ctx":
        return None
    trace_one = _trace_function(_NullTracer(), args.mode, args.profile, args.project, payloads)
    calls = min(_CALIBRATION_CALLS, args.calls)
    started = time.thread_time()
    for i in range(calls):
        trace_one(i)
    return (time.thread_time() - started) / calls * 1e6


def _produce(tracer: Tracer, args: argparse.Namespace, first: int, count: int,
             deadline: float, ready: Any, go: Any, conn: Connection) -> None:
    """One producer: trace calls ``first .. first+count`` (or until ``deadline``), report."""
    payloads = _run.pregenerate(args.profile, args.calls, args.distinct_payloads)
    driver_us = driver_cpu_us_per_call(args, payloads) if first == 0 else None
    trace_one = _trace_function(tracer, args.mode, args.profile, args.project, payloads)
    ready.release()
    go.wait()
    usage0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    done = 0
    for i in range(first, first + count):
        # A clock read per 256 calls keeps the bound without costing the loop.
        if not done & 255 and time.monotonic() > deadline:
            break
        trace_one(i)
        done += 1
    wall_s = time.perf_counter() - wall0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = usage.ru_utime + usage.ru_stime - usage0.ru_utime - usage0.ru_stime
    tracer.close()
    conn.send({"calls": done, "wall_s": wall_s, "cpu_s": cpu_s, "driver_us": driver_us,
               "peak_rss_kib": peak_rss_kib(os.getpid())})
    conn.close()


def peak_rss_kib(pid: int) -> int | None:
    """``VmHWM`` of a live process (its peak resident set), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process so far (0.0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    # utime and stime are fields 14 and 15 of the line, 12 and 13 after the ")".
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """The live children of ``pid``, theirs, and so on (from /proc; gone ones are skipped)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in glob.glob(f"/proc/{parent}/task/*/children"):
            try:
                with open(task) as children:
                    kids = [int(k) for k in children.read().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


# ---- the owner -----------------------------------------------------------------------------


def _start_producers(eng: Engine, args: argparse.Namespace, deadline: float) -> tuple[list, list[Connection], Any]:
    ctx = multiprocessing.get_context("fork")
    ready, go = ctx.Semaphore(0), ctx.Event()
    tracer = eng.producer()
    share, extra = divmod(args.calls, args.producers)
    processes, conns, first = [], [], 0
    for k in range(args.producers):
        count = share + (1 if k < extra else 0)
        parent_end, child_end = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_produce, daemon=True, args=(
            tracer, args, first, count, deadline, ready, go, child_end))
        proc.start()
        child_end.close()
        processes.append(proc)
        conns.append(parent_end)
        first += count
    for _ in processes:
        if not ready.acquire(timeout=_START_TIMEOUT_S):
            raise RuntimeError(f"a producer did not start within {_START_TIMEOUT_S:.0f} s")
    return processes, conns, go


def _collect(report: EngineReport, processes: list, conns: list[Connection],
             deadline: float) -> None:
    results = []
    for proc, conn in zip(processes, conns):
        if not conn.poll(max(deadline - time.monotonic(), 0.0) + 5.0):
            report.timed_out = True
            continue
        results.append(conn.recv())
        proc.join(5.0)
    report.calls_enqueued = sum(r["calls"] for r in results)
    report.producer_cpu_us_per_call = [r["cpu_s"] / max(r["calls"], 1) * 1e6 for r in results]
    report.producer_peak_rss_kib = [r["peak_rss_kib"] for r in results]
    total_cpu_s = sum(r["cpu_s"] for r in results)
    n = max(report.calls_enqueued, 1)
    report.loop_cpu_us_per_call = report.loop_main_thread_cpu_us_per_call = total_cpu_s / n * 1e6
    report.loop_wall_s = max((r["wall_s"] for r in results), default=0.0)
    report.driver_cpu_us_per_call = next(
        (r["driver_us"] for r in results if r["driver_us"] is not None), None)
    report.enqueue_calls_per_s = report.calls_enqueued / max(report.loop_wall_s, 1e-9)


def _wait_for_senders(eng: Engine, deadline: float) -> list[int]:
    """The senders' pids once each runs its loop (it publishes its pid there); those that
    came up by ``deadline`` (the run then goes on and counts the others' start-up)."""
    pids: list[int] = []
    while time.monotonic() < deadline:
        pids = [int(pid) for pid in eng.stats().get("sender_pids", []) if pid]
        if len(pids) == eng.spec.senders:
            return pids
        time.sleep(0.01)
    return pids


def _fill_from_stats(report: EngineReport, stats: dict[str, Any], total_s: float) -> None:
    for name in ("items_acked", "bytes_sent_raw", "bytes_sent_wire", "bytes_acked",
                 "rejected_bytes_413", "splits_413", "retries", "dead_letters",
                 "latency_p50_us", "latency_p90_us", "latency_p99_us", "latency_max_us"):
        setattr(report, name, int(stats.get(name, 0)))
    report.dropped_full = int(stats.get("producers", {}).get("dropped_full", 0))
    report.mb_per_s_raw = report.bytes_sent_raw / max(total_s, 1e-9) / 1e6
    report.mb_per_s_wire = report.bytes_sent_wire / max(total_s, 1e-9) / 1e6


def _drive(report: EngineReport, args: argparse.Namespace, deadline: float,
           state_dir: str) -> None:
    senders = args.senders if args.senders == "auto" else int(args.senders)
    with Engine(url=args.url, project=args.project, compression=args.compression,
                dead_letter_path=os.path.join(state_dir, "dead_letters.jsonl"),
                shutdown_timeout_s=5.0, senders=senders) as eng:
        processes, conns, go = _start_producers(eng, args, deadline)
        # Like every contender's imports, the senders' interpreter start-up is not timed.
        sender_pids = _wait_for_senders(eng, deadline)
        sender_cpu0_s = sum(map(process_cpu_s, sender_pids))
        began = time.perf_counter()
        go.set()
        _collect(report, processes, conns, deadline)
        flush_began = time.perf_counter()
        delivered = eng.flush(timeout_s=max(deadline - time.monotonic(), 0.0))
        ended = time.perf_counter()
        stats = eng.stats()
        sender_cpu_s = sum(map(process_cpu_s, sender_pids)) - sender_cpu0_s
        report.senders = len(sender_pids)
        report.sender_peak_rss_kib = max(
            (peak_rss_kib(pid) or 0 for pid in sender_pids), default=None)
        if not delivered:
            report.timed_out = True
        else:
            report.flush_s = ended - flush_began
            report.calls_per_s = report.calls_enqueued / max(ended - began, 1e-9)
        _fill_from_stats(report, stats, ended - began)
        # Like the peers' figure (their sender thread included): producers plus the sender.
        n = max(report.calls_enqueued, 1)
        report.sender_cpu_us_per_call = sender_cpu_s / n * 1e6
        report.process_cpu_us_per_call = report.loop_cpu_us_per_call + report.sender_cpu_us_per_call


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    deadline = time.monotonic() + args.timeout_s
    report = EngineReport("engine", args.mode, args.profile, args.calls,
                          producers=args.producers, compression=args.compression)
    report.versions["engine"] = _engine_version()
    report.distinct_payloads = min(args.calls, args.distinct_payloads)  # each producer's
    count_before = _run.read_count(args.count_url)
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as state_dir:
        try:
            _drive(report, args, deadline, state_dir)
        except Exception as e:  # a failed run is a result to report, not a crash
            report.error = f"{type(e).__name__}: {e}"
    _run.finish(report, count_before, args.count_url)
    return 1 if report.error else 0


def _engine_version() -> str:
    try:
        from importlib.metadata import version

        return version("engine")
    except Exception:
        return "source"


if __name__ == "__main__":
    sys.exit(main())
