"""``engine ingest`` of one large JSON-lines file, with the CPU of each of its processes.

    python -m bench.ingest_file [--lines 1000000] [--processes 2] [--sink count]
                                [--repeat 3] [--file PATH]

The pipes scenario ingests the bench's 100k lines, where the start-ups of the command's
processes (the command, its workers, its sender) still weigh in the rate. This ingests a
large file -- by default 1M lines, 4.1 GB: the 100k eval calls of ``pipes.write_jsonl``
written again until there are ``--lines`` (a count sink counts every copy; into SQLite the
copies are upserts of the same calls, so use ``--sink sqlite`` with ``--lines 100000``
or a ``--file`` of distinct calls) -- and reports per run the command's own calls/s, the
calls lost, and the CPU µs per call of the command, its workers, its sender and the sink.
Each process's CPU is read from ``/proc`` every 20 ms while it runs (its last reading
before it exits counts), the sink's at the end. ``--file`` reuses a file (it is not
deleted); otherwise the file is written to a temporary folder and removed.

Prints one JSON line per run and the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import harness
from bench.contenders.engine_driver import descendants, process_cpu_s
from bench.scenarios.pipes import _ingest_rate, write_jsonl

_BASE_LINES = 100_000
_POLL_S = 0.02
# a child of the command, by its command line; any other is a worker (spawned, or forked
# with the command's own command line)
_ROLES = ((b"engine.sender", "sender"), (b"resource_tracker", "command"))


def write_file(path: Path, lines: int, base: Path) -> None:
    """``lines`` eval calls: ``write_jsonl``'s first ``min(lines, 100k)`` written again and
    again (a large file in the time of a small one)."""
    write_jsonl(base, min(lines, _BASE_LINES))
    with path.open("wb") as out:
        left = lines
        while left >= _BASE_LINES:
            with base.open("rb") as source:
                shutil.copyfileobj(source, out, 1 << 20)
            left -= _BASE_LINES
        with base.open("rb") as source:
            for _ in range(left):
                out.write(source.readline())


def _role(pid: int, command_pid: int) -> str:
    if pid == command_pid:
        return "command"
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "workers"
    return next((role for key, role in _ROLES if key in cmdline), "workers")


def run_once(path: Path, lines: int, processes: int, sink: str, timeout_s: float) -> dict[str, Any]:
    with harness.sink(sink) as s, tempfile.TemporaryDirectory(prefix="bench-ingest-") as work:
        argv = [sys.executable, "-m", "engine", "ingest", str(path), "--to", s.url,
                "--processes", str(processes), "--no-progress",
                "--checkpoint", os.path.join(work, "checkpoint")]
        env = {**os.environ, "ENGINE_DEAD_LETTER_PATH": os.path.join(work, "dead.jsonl")}
        sink_cpu0 = s.cpu_s()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
        seen: dict[int, tuple[str, float]] = {}
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            for pid in (proc.pid, *descendants(proc.pid)):
                cpu = process_cpu_s(pid)
                if cpu:
                    seen[pid] = (seen[pid][0] if pid in seen else _role(pid, proc.pid), cpu)
            time.sleep(_POLL_S)
        if proc.poll() is None:
            proc.kill()
        stdout, stderr = proc.communicate()
        sink_cpu_s = s.cpu_s() - sink_cpu0
        received = s.calls_received()
    cpu = {"command": 0.0, "workers": 0.0, "sender": 0.0}
    for role, seconds in seen.values():
        cpu[role] += seconds
    return {
        "lines": lines, "processes": processes, "sink": sink,
        "calls_per_s": _ingest_rate(stdout), "calls_lost": lines - received,
        **{f"{role}_cpu_us_per_call": round(s / lines * 1e6, 2) for role, s in cpu.items()},
        "sink_cpu_us_per_call": round(sink_cpu_s / lines * 1e6, 2),
        "error": None if proc.returncode == 0 else f"exit {proc.returncode}: {stderr[-300:]}",
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--sink", choices=("count", "decode", "sqlite"), default="count")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--file", type=Path, default=None, help="ingest this file instead")
    parser.add_argument("--timeout-s", type=float, default=1800.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-ingest-file-") as work:
        path = args.file
        if path is None:
            path = Path(work) / "calls.jsonl"
            write_file(path, args.lines, Path(work) / "base.jsonl")
        lines = sum(1 for _ in path.open("rb")) if args.file else args.lines
        runs = []
        for _ in range(args.repeat):
            runs.append(run_once(path, lines, args.processes, args.sink, args.timeout_s))
            print(json.dumps(runs[-1]), flush=True)
    keys = [k for k in runs[0] if k == "calls_per_s" or k.endswith("_us_per_call")]
    medians = {k: statistics.median(r[k] or 0 for r in runs) for k in keys}
    print(json.dumps({"median": medians, "lost": sum(r["calls_lost"] for r in runs),
                      "errors": [r["error"] for r in runs if r["error"]]}), flush=True)


if __name__ == "__main__":
    main()
