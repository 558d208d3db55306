"""Running contenders: sinks, driver subprocesses, and the figures each scenario records.

Every contender runs in a fresh interpreter (its driver prints one JSON line) against a
fresh sink started for that run: ``engine serve --store count`` (decode and count), or
``--store sqlite`` where distinct stored calls are needed, or the fault-injecting
``tests.faultserver.FaultServer``. The harness only launches, counts at the sink and reads
the lines; scenario code (``bench.scenarios``) decides what to run.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.contenders.engine_driver import peak_rss_kib, process_cpu_s
from engine.server import spawn_server, stop_server
from engine.server._subprocess import spawn_listening

REPO = Path(__file__).resolve().parents[1]
PROJECT = "bench-entity/bench-project"
_DRIVER_GRACE_S = 30.0  # a driver's own timeout plus startup and reporting


# ---- machine and versions ------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """CPU model, cores, Python, package versions, date and load: stated with every result."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("weave", "aiohttp", "msgspec", "uvloop", "zstandard", "faster-fifo",
                    "matplotlib"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {
        "record": "machine",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        "load_avg_1_5_15": list(os.getloadavg()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
        "versions": versions,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    """HEAD of the checkout, or ``$BENCH_GIT_COMMIT`` when running from an exported tree."""
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                          capture_output=True, text=True)
    return done.stdout.strip() or os.environ.get("BENCH_GIT_COMMIT")


# ---- sinks -------------------------------------------------------------------------------------


@dataclass
class Sink:
    """A running ``engine serve`` child: its URL and pid, and what it counted."""

    url: str
    pid: int
    store: str

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/stats", timeout=10) as reply:
            return json.load(reply)

    def calls_received(self) -> int:
        """Call items decoded since start (a re-sent call counts again)."""
        stats = self.stats()
        return int(stats["calls_complete"]) + int(stats["calls_ended"])

    def distinct_calls(self, project_id: str = PROJECT) -> int:
        """Distinct calls stored (SQLite upserts by id, so re-sends are merged)."""
        request = urllib.request.Request(
            self.url + "/calls/query_stats", data=json.dumps({"project_id": project_id}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as reply:
            return int(json.load(reply)["count"])

    def peak_rss_kib(self) -> int | None:
        return peak_rss_kib(self.pid)


    def cpu_s(self) -> float:
        """User + system CPU seconds the sink process has used so far."""
        return process_cpu_s(self.pid)


SINKS = ("count", "decode", "sqlite")
"""``count``: ``engine serve --store count`` (call fields checked as raw JSON, nothing kept);
``decode``: ``bench.decode_sink`` (every body decompressed and decoded into Python objects,
nothing kept); ``sqlite``: ``engine serve`` storing into a fresh SQLite file."""


@contextmanager
def sink(store: str = "count", max_body_bytes: int | None = None,
         latency_ms: float = 0.0) -> Iterator[Sink]:
    """A fresh sink subprocess (one of :data:`SINKS`) on 127.0.0.1 port 0; always stopped.
    ``latency_ms`` (decode sink only) answers every ingest request that much later."""
    if latency_ms and store != "decode":
        raise ValueError("only the decode sink answers late (latency_ms)")
    with tempfile.TemporaryDirectory(prefix="bench-sink-") as state_dir:
        if store == "decode":
            proc, url = spawn_listening([sys.executable, "-m", "bench.decode_sink",
                                         "--latency-ms", str(latency_ms)],
                                        env={**os.environ, "PYTHONPATH": str(REPO)})
        else:
            db_path = os.path.join(state_dir, "traces.db") if store == "sqlite" else None
            proc, url = spawn_server(db_path, store=store, max_body_bytes=max_body_bytes)
        try:
            yield Sink(url, proc.pid, store)
        finally:
            stop_server(proc)


# ---- driver subprocesses ---------------------------------------------------------------------


def driver_argv(contender: str, url: str, calls: int, profile: str, timeout_s: float,
                producers: int = 1, compression: str = "none", mode: str | None = None,
                distinct_payloads: int | None = None) -> list[str]:
    """The command line of one driver process for ``contender``.

    ``engine`` runs all ``producers`` inside one driver (they share one Engine); a peer
    driver is one producer process, so the caller starts one per producer.
    """
    common = ["--url", url, "--calls", str(calls), "--profile", profile,
              "--timeout-s", str(timeout_s), "--project", PROJECT]
    if contender == "engine":
        extra = [] if distinct_payloads is None else ["--distinct-payloads", str(distinct_payloads)]
        return [sys.executable, "-m", "bench.contenders.engine_driver", *common,
                "--mode", mode or "startend", "--producers", str(producers),
                "--compression", compression, *extra]
    if contender == "weave-batched":
        return [sys.executable, "-m", "bench.peers.weave_client", *common,
                "--mode", mode or "batched"]
    if contender == "weave-op":
        return [sys.executable, "-m", "bench.peers.weave_client", *common, "--mode", "op"]
    if contender == "weave-op+engine":
        return [sys.executable, "-m", "bench.peers.weave_client", *common, "--mode", "op-engine"]
    if contender == "naive":
        return [sys.executable, "-m", "bench.peers.naive", *common, "--mode", "complete"]
    raise ValueError(f"unknown contender {contender!r}")


def start_driver(argv: list[str], work_dir: str) -> subprocess.Popen:
    """Start a driver with the repo importable and a private cwd and HOME (peers litter)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": work_dir}
    return subprocess.Popen(argv, cwd=work_dir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish_driver(proc: subprocess.Popen, timeout_s: float) -> dict[str, Any]:
    """The driver's JSON line, or a row with ``error`` naming what went wrong."""
    try:
        out, err = proc.communicate(timeout=timeout_s + _DRIVER_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return {"error": f"driver did not exit within {timeout_s + _DRIVER_GRACE_S:.0f} s",
                "timed_out": True, "stderr_tail": err[-800:]}
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": f"driver exited {proc.returncode} without a JSON line",
                "stderr_tail": err[-800:]}
    row = json.loads(lines[-1])
    if proc.returncode not in (0, 1, 3):
        row.setdefault("error", f"driver exited {proc.returncode}")
    return row


def split_calls(calls: int, parts: int) -> list[int]:
    """``calls`` shared among ``parts`` peer driver processes (one per producer)."""
    share, extra = divmod(calls, parts)
    return [share + (1 if k < extra else 0) for k in range(parts)]


def run_drivers(argvs: list[list[str]], timeout_s: float) -> tuple[list[dict[str, Any]], float]:
    """Run drivers concurrently; their rows and the wall time from launch to the last exit."""
    with tempfile.TemporaryDirectory(prefix="bench-driver-") as work_dir:
        began = time.perf_counter()
        procs = [start_driver(argv, work_dir) for argv in argvs]
        rows = [finish_driver(proc, timeout_s) for proc in procs]
        return rows, time.perf_counter() - began
