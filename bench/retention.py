"""How fast ``engine serve`` deletes calls past their retention, and what clients see meanwhile.

    python -m bench.retention                        # 500k calls, SQLite
    python -m bench.retention --calls 200000 --store chdb

Loads ``--calls`` eval calls a month old (``bench.serve_queries``' traces) with ``engine
ingest`` into ``engine serve``, stops it, and starts it again on the same store with
``--retention-days 1``: its first pass (5 s after the start) deletes them all while a
client sends one fresh call every 50 ms. Reports how long the pass took (the server's
``retention_last_pass_ms``, ``/stats``), the client's request latency meanwhile, and checks
that exactly the fresh calls are left (exit 1 otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.harness import machine_info
from bench.scenarios.pipes import _ingest_rate
from bench.serve_queries import PROJECT, write_calls
from engine.server._subprocess import _serve_argv, spawn_listening, stop_server
from engine.wire._codec import uuid7
from tests.server.serve_process import get, post


def _fresh_call(i: int) -> dict[str, Any]:
    call_id, now = uuid7(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {"project_id": PROJECT, "id": call_id, "trace_id": call_id, "op_name": "fresh",
            "started_at": now, "ended_at": now, "attributes": {}, "inputs": {"i": i},
            "output": i, "summary": {}}  # fmt: skip


class Feeder(threading.Thread):
    """One fresh call every 50 ms; (seconds since ``t0``, latency ms, status) of each."""

    def __init__(self, url: str, t0: float) -> None:
        super().__init__(daemon=True)
        self.url, self.t0, self.sent = url, t0, []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and len(self.sent) < 100_000:
            began = time.perf_counter()
            status = post(self.url, f"/v2/{PROJECT}/calls/complete",
                          {"batch": [_fresh_call(len(self.sent))]})[0]
            self.sent.append((time.monotonic() - self.t0, (time.perf_counter() - began) * 1000, status))
            self.stop.wait(0.05)


def run(n_calls: int, store: str, timeout_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="engine-bench-retention-") as tmp:
        work = Path(tmp)
        calls, store_arg = work / "calls.jsonl", store
        write_calls(calls, n_calls, uuid7)
        if store == "chdb":
            store_arg = f"chdb:///{work / 'chdb'}"
        proc, url = spawn_listening(_serve_argv(work / "t.db", store_arg, None, None))
        try:
            done = subprocess.run(
                [sys.executable, "-m", "engine", "ingest", str(calls), "--to", url, "--no-progress",
                 "--checkpoint", str(work / "checkpoint")], capture_output=True, text=True,
                timeout=timeout_s, env={**os.environ, "ENGINE_DEAD_LETTER_PATH": str(work / "dead.jsonl")})  # fmt: skip
        finally:
            stop_server(proc)
        if done.returncode != 0:
            raise RuntimeError(f"engine ingest exited {done.returncode}: {done.stderr[-500:]}")
        calls.unlink()
        t0 = time.monotonic()
        proc, url = spawn_listening(_serve_argv(work / "t.db", store_arg, None, None)
                                    + ["--retention-days", "1"])
        feeder = Feeder(url, t0)
        try:
            feeder.start()
            stats: dict[str, Any] = {}
            deadline = t0 + timeout_s
            while time.monotonic() < deadline:
                stats = get(url, "/stats")[1]
                if stats["retention_passes"]:  # the first pass is over
                    break
                time.sleep(0.05)
            done_at = time.monotonic() - t0
            feeder.stop.set()
            feeder.join()
            left = stats.get("calls_expired", 0), _count(url)
        finally:
            stop_server(proc)
    if not stats.get("retention_passes"):
        raise RuntimeError(f"the first retention pass did not end within {timeout_s} s")
    delete_s = stats["retention_last_pass_ms"] / 1000
    during = sorted(ms for at, ms, _ in feeder.sent if done_at - delete_s - 0.05 <= at <= done_at)
    return {"record": "retention", "store": store, "calls": n_calls,
            "load_calls_per_s": _ingest_rate(done.stdout), "delete_s": delete_s,
            "deleted_per_s": n_calls / max(delete_s, 1e-3), "expired": left[0],
            "fresh_sent": len(feeder.sent), "fresh_left": left[1],
            "statuses": sorted({s for _, _, s in feeder.sent}),
            "client_ms_median": statistics.median(during) if during else None,
            "client_ms_max": max(during) if during else None, "client_requests": len(during),
            "right": left == (n_calls, len(feeder.sent)) and {s for _, _, s in feeder.sent} == {200}}  # fmt: skip


def _count(url: str) -> int:
    status, answer, _ = post(url, "/calls/query_stats", {"project_id": PROJECT})
    if status != 200:
        raise RuntimeError(f"/calls/query_stats answered {status}: {answer}")
    return answer["count"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.retention", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=500_000, help="a multiple of 5")
    parser.add_argument("--store", choices=("sqlite", "chdb"), default="sqlite")
    parser.add_argument("--timeout-s", type=float, default=1800.0)
    parser.add_argument("--out", default="bench/results/retention.jsonl")
    args = parser.parse_args(argv)
    if args.calls < 5 or args.calls % 5:
        parser.error(f"--calls: a positive multiple of 5, got {args.calls}")
    result = run(args.calls, args.store, args.timeout_s)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(machine_info()) + "\n" + json.dumps(result) + "\n")
    print(f"{result['calls']:,} month-old calls deleted by {args.store}'s first retention pass in "
          f"{result['delete_s']:.1f} s ({result['deleted_per_s']:,.0f} calls/s); a client sending "
          f"a call every 50 ms meanwhile: {result['client_requests']} requests, median "
          f"{result['client_ms_median'] or 0:.1f} ms, max {result['client_ms_max'] or 0:.1f} ms; "
          f"{result['fresh_left']} of {result['fresh_sent']} fresh calls left; "
          f"{'right' if result['right'] else 'WRONG'}")
    return 0 if result["right"] else 1


if __name__ == "__main__":
    sys.exit(main())
