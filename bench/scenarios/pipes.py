"""pipes: the engine's other two doors, ``engine ingest`` of a file and ``engine relay``.

- **ingest**: one JSON-lines file of eval calls (complete items, ISO-8601 timestamps, as an
  export holds them), ``engine ingest FILE --processes 2`` into a count sink and into SQLite.
  calls/s is the command's own figure (from its engine's start to the last acknowledgement);
  its interpreter start-up is left out, as for every contender. The client's CPU (the
  command, its workers and its sender) comes from the harness's ``RUSAGE_CHILDREN``, the
  sink's from ``/proc``.
- **relay**: the engine's own client (the engine driver, 2 producers, Structs) posting to
  ``engine relay``, which delivers to a count sink. calls/s counts until the sink holds every
  call; CPU per call of the client (producers + sender), the relay (its process and its own
  sender) and the sink, each from its processes.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

from bench import harness
from bench._cells import flags, num, spread
from bench._run import Config
from bench.contenders.engine_driver import descendants, process_cpu_s
from bench.payloads import profile
from engine.server import stop_server
from engine.server._subprocess import spawn_listening
from engine.wire._codec import uuid7

_PROFILE = "eval"
_PRODUCERS = 2
_SINK_WAIT_S = 60.0


# ---- ingest ------------------------------------------------------------------------------------


def write_jsonl(path: Path, calls: int) -> None:
    """``calls`` complete eval calls, one per line, as an export of a trace store holds them."""
    p = profile(_PROFILE)
    encoder = msgspec.json.Encoder()
    with path.open("wb") as out:
        for i in range(calls):
            moment = f"2026-12-01T10:{i // 60_000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}000Z"
            call = p.complete_call(i, project_id=harness.PROJECT, call_id=uuid7(),
                                   trace_id=uuid7(), started_at=moment, ended_at=moment)
            out.write(encoder.encode(call) + b"\n")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _ingest_rate(stdout: str) -> float | None:
    """The rate ``engine ingest`` prints: "... in 3.2 s (31,234/s) to ..."."""
    _, sep, rest = stdout.rpartition(" s (")
    if not sep:
        return None
    return float(rest.split("/s)", 1)[0].replace(",", ""))


def measure_ingest(path: Path, calls: int, sink: str, timeout_s: float) -> dict[str, Any]:
    with harness.sink(sink) as s, tempfile.TemporaryDirectory(prefix="bench-ingest-") as work:
        argv = [sys.executable, "-m", "engine", "ingest", str(path), "--to", s.url,
                "--processes", str(_PRODUCERS), "--no-progress",
                "--checkpoint", os.path.join(work, "checkpoint")]
        sink_cpu0, client_cpu0 = s.cpu_s(), _children_cpu_s()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, "ENGINE_DEAD_LETTER_PATH":
                                   os.path.join(work, "dead.jsonl")})
        client_cpu_s, sink_cpu_s = _children_cpu_s() - client_cpu0, s.cpu_s() - sink_cpu0
        received = s.calls_received()
        distinct = s.distinct_calls() if sink == "sqlite" else None
    error = None if done.returncode == 0 else f"exit {done.returncode}: {done.stderr[-300:]}"
    return {
        "record": "run", "scenario": "pipes", "case": "ingest", "contender": "engine",
        "mode": "ingest", "profile": _PROFILE, "producers": _PRODUCERS, "compression": "auto",
        "sink": sink, "calls_offered": calls, "calls_received_at_sink": received,
        "calls_distinct_at_sink": distinct,
        "calls_lost": calls - (distinct if distinct is not None else received),
        "calls_per_s": _ingest_rate(done.stdout),
        "client_cpu_us_per_call": client_cpu_s / calls * 1e6,
        "sink_cpu_us_per_call": sink_cpu_s / calls * 1e6, "error": error,
    }  # fmt: skip


# ---- relay -------------------------------------------------------------------------------------


@contextmanager
def relay(upstream: str) -> Iterator[tuple[str, int]]:
    """``engine relay`` on port 0 in front of ``upstream``: (its URL, its pid); always stopped."""
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as work:
        env = {**os.environ, "ENGINE_DEAD_LETTER_PATH": os.path.join(work, "dead.jsonl")}
        proc, url = spawn_listening([sys.executable, "-m", "engine", "relay", "--listen",
                                     "127.0.0.1:0", "--upstream", upstream], env=env)
        try:
            yield url, proc.pid
        finally:
            stop_server(proc, timeout_s=60.0)


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants (the relay and its sender process)."""
    return sum(map(process_cpu_s, (pid, *descendants(pid))))


def _wait_for_sink(s: harness.Sink, calls: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if s.calls_received() >= calls:
            return True
        time.sleep(0.01)
    return False


def measure_relay(calls: int, compression: str, timeout_s: float) -> dict[str, Any]:
    with harness.sink("count") as s, relay(s.url) as (relay_url, relay_pid):
        argv = harness.driver_argv("engine", relay_url, calls, _PROFILE, timeout_s,
                                   producers=_PRODUCERS, compression=compression)
        sink_cpu0, relay_cpu0 = s.cpu_s(), _tree_cpu_s(relay_pid)
        (row,), _wall_s = harness.run_drivers([argv], timeout_s)
        exited = time.perf_counter()
        complete = _wait_for_sink(s, calls, time.monotonic() + _SINK_WAIT_S)
        after_exit_s = time.perf_counter() - exited
        relay_cpu_s, sink_cpu_s = _tree_cpu_s(relay_pid) - relay_cpu0, s.cpu_s() - sink_cpu0
        received = s.calls_received()
    active_s = row["loop_wall_s"] + row["flush_s"] if row.get("flush_s") is not None else None
    n = max(row.get("calls_enqueued") or 0, 1)
    return {
        "record": "run", "scenario": "pipes", "case": "relay", "contender": "engine",
        "mode": "relay", "profile": _PROFILE, "producers": _PRODUCERS,
        "compression": compression, "sink": "count", "calls_offered": calls,
        "calls_received_at_sink": received, "calls_lost": calls - received,
        # until the sink holds every call (the driver's exit counts: an upper bound on time)
        "calls_per_s": calls / (active_s + after_exit_s) if active_s and complete else None,
        "client_cpu_us_per_call": row.get("process_cpu_us_per_call"),
        "relay_cpu_us_per_call": relay_cpu_s / n * 1e6,
        "sink_cpu_us_per_call": sink_cpu_s / n * 1e6,
        "timed_out": row.get("timed_out", False) or not complete, "error": row.get("error"),
    }  # fmt: skip


def run(cfg: Config, repeat: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if "engine" not in cfg.contenders:
        return rows
    with tempfile.TemporaryDirectory(prefix="bench-pipes-") as work:
        path = Path(work) / "calls.jsonl"
        write_jsonl(path, cfg.pipe_calls)
        for _ in range(repeat):
            for sink in ("count", "sqlite"):
                rows.append(measure_ingest(path, cfg.pipe_calls, sink, cfg.timeout_s))
            for compression in ("none", "zstd"):
                rows.append(measure_relay(cfg.pipe_calls, compression, cfg.timeout_s))
    return rows


def section(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| path | sink | compression | calls/s (median, min–max) | client CPU µs/call | "
             "relay CPU µs/call | sink CPU µs/call | lost | notes |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in sorted(rows, key=lambda r: (r["case"], r["sink"], r["compression"])):
        lines.append(f"| {r['case']} | {r['sink']} | {r['compression']} | "
                     f"{spread(r, 'calls_per_s')} | {num(r.get('client_cpu_us_per_call'), 1)} | "
                     f"{num(r.get('relay_cpu_us_per_call'), 1)} | "
                     f"{num(r.get('sink_cpu_us_per_call'), 1)} | {r.get('calls_lost', '–')} | "
                     f"{flags(r)} |")
    return lines
