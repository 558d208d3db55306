"""What every peer driver shares: its command line, the meter, the one-line JSON report.

A driver runs in a fresh process, pre-generates its payloads, then times three phases:
the enqueue loop (the traced program's own cost), the flush (until the client says all
is sent), and, when ``--count-url`` is given, how many calls the sink really holds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.payloads import PROFILE_NAMES, profile

# Pre-generating every item of a million-call run would cost gigabytes; past this many
# items the loop reuses the pool (ids and timestamps still differ per call).
MAX_DISTINCT_PAYLOADS = 10_000
DEFAULT_PROJECT = "bench-entity/bench-project"


@dataclass(frozen=True)
class Payload:
    """One pre-generated call's content."""

    inputs: dict[str, Any]
    output: Any
    summary: dict[str, Any]
    attributes: dict[str, Any]


@dataclass
class Report:
    """The JSON line a driver prints: one run of one contender."""

    contender: str
    mode: str
    profile: str
    calls_offered: int
    calls_enqueued: int = 0
    distinct_payloads: int = 0
    loop_wall_s: float = 0.0
    loop_cpu_us_per_call: float = 0.0
    loop_main_thread_cpu_us_per_call: float = 0.0
    enqueue_calls_per_s: float = 0.0
    flush_s: float | None = None
    calls_per_s: float | None = None
    process_cpu_us_per_call: float | None = None
    calls_stored: int | None = None
    calls_lost: int | None = None
    timed_out: bool = False
    error: str | None = None
    peak_rss_kib: int = 0
    versions: dict[str, str] = field(default_factory=dict)

    def emit(self) -> None:
        sys.stdout.write(json.dumps(asdict(self), separators=(",", ":")) + "\n")
        sys.stdout.flush()


def parse_args(
    description: str, modes: tuple[str, ...], argv: list[str] | None
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--url", required=True, help="trace server base URL (loopback)")
    parser.add_argument("--calls", type=int, required=True, help="calls to trace")
    parser.add_argument("--profile", choices=PROFILE_NAMES, default="eval")
    parser.add_argument("--mode", choices=modes, default=modes[0])
    parser.add_argument("--project", default=DEFAULT_PROJECT, help="entity/project")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="give up after this")
    parser.add_argument(
        "--count-url",
        help="GET URL answering JSON with an integer 'calls' (completed calls stored), or "
        "engine serve's /stats; read before and after the run to count lost calls",
    )
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error("--calls must be at least 1")
    if args.project.count("/") != 1:
        parser.error(f"--project must be 'entity/project', got {args.project!r}")
    return args


def pregenerate(profile_name: str, calls: int,
                distinct: int = MAX_DISTINCT_PAYLOADS) -> list[Payload]:
    """The payloads a run cycles through: ``min(calls, distinct)`` of them. The default pool
    (~60 MB of eval payloads) is far larger than the caches, so every call's data is read
    from memory; a small pool (64 fit in a core's L2) is data the program just built."""
    p = profile(profile_name)
    return [
        Payload(p.inputs(i), p.output(i), p.summary(i), p.attributes(i))
        for i in range(min(calls, distinct))
    ]


def read_count(count_url: str | None) -> int | None:
    """The sink's count of stored calls, or None when no count URL was given.

    Reads ``calls`` (the test stub), else ``calls_complete + calls_ended`` (the counters
    of ``engine serve``'s ``/stats``).
    """
    if count_url is None:
        return None
    with urllib.request.urlopen(count_url, timeout=10) as reply:
        body = json.load(reply)
    if "calls" in body:
        return int(body["calls"])
    try:
        return int(body["calls_complete"]) + int(body["calls_ended"])
    except KeyError:
        raise ValueError(f"{count_url} answered without a call count: {sorted(body)}") from None


@dataclass(frozen=True)
class _Clock:
    wall_s: float
    process_cpu_s: float
    thread_cpu_s: float

    @classmethod
    def now(cls) -> _Clock:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return cls(time.perf_counter(), usage.ru_utime + usage.ru_stime, time.thread_time())


def run_loop(
    report: Report, n_calls: int, deadline: float, trace_one: Callable[[int], None]
) -> _Clock:
    """Call ``trace_one(i)`` for each call until done or past ``deadline``; fill the loop figures.

    Process CPU includes the client's background threads working meanwhile; the main
    thread's CPU is what the traced program itself pays per call.
    """
    start = _Clock.now()
    for i in range(n_calls):
        if time.monotonic() > deadline:
            report.timed_out = True
            break
        trace_one(i)
        report.calls_enqueued += 1
    end = _Clock.now()
    n = max(report.calls_enqueued, 1)
    report.loop_wall_s = end.wall_s - start.wall_s
    report.loop_cpu_us_per_call = (end.process_cpu_s - start.process_cpu_s) / n * 1e6
    report.loop_main_thread_cpu_us_per_call = (end.thread_cpu_s - start.thread_cpu_s) / n * 1e6
    report.enqueue_calls_per_s = report.calls_enqueued / max(report.loop_wall_s, 1e-9)
    return start


def run_flush(
    report: Report, loop_start: _Clock, deadline: float, flush: Callable[[], None]
) -> None:
    """Run ``flush`` in a helper thread so a client that never returns cannot hang us."""
    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            flush()
        except BaseException as e:  # reported in the JSON line, not lost in a thread
            errors.append(e)

    began = time.perf_counter()
    worker = threading.Thread(target=guarded, name="peer-flush", daemon=True)
    worker.start()
    worker.join(timeout=max(deadline - time.monotonic(), 0.0))
    if worker.is_alive():
        report.timed_out = True
        return
    if errors:
        report.error = f"flush failed: {errors[0]!r}"
        return
    end = _Clock.now()
    report.flush_s = end.wall_s - began
    total_s = end.wall_s - loop_start.wall_s
    report.calls_per_s = report.calls_enqueued / max(total_s, 1e-9)
    n = max(report.calls_enqueued, 1)
    report.process_cpu_us_per_call = (end.process_cpu_s - loop_start.process_cpu_s) / n * 1e6


def finish(report: Report, count_before: int | None, count_url: str | None) -> None:
    """Count at the sink, record peak RSS and versions, print the line, and exit.

    Exits with ``os._exit`` after a timeout: the peer's own exit hooks would otherwise
    block on the very queue that did not drain.
    """
    if count_before is not None and not report.timed_out:
        report.calls_stored = read_count(count_url) - count_before
        report.calls_lost = report.calls_enqueued - report.calls_stored
    report.peak_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report.versions.setdefault("python", platform.python_version())
    report.emit()
    if report.timed_out:
        os._exit(3)
