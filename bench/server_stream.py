"""Rows/s of ``calls_query_stream`` against ``engine serve`` (SQLite) at growing store sizes.

    python -m bench.server_stream                          # 1k, 10k, 100k, 1M stored calls
    python -m bench.server_stream --sizes 1000,10000 --repeat 3

For each size a fresh ``engine serve`` child (its own SQLite file in a temporary folder)
is filled through ``/v2/{entity}/{project}/calls/complete`` with small profile calls
(~0.8 KB each, ``bench/payloads.py``), then every call is read back with one unlimited
``POST /calls/stream_query`` (the default order, by start time). Figures per size: rows/s
(rows over the wall time from sending the request to the last byte), the server's CPU
seconds per 1k rows (its ``/proc`` times: less noisy than wall time on a shared box),
time to the first row, and whether the row count and order were right. Prints a markdown
table and writes JSON lines to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgspec

from bench.harness import machine_info
from bench.payloads import profile
from engine.server import spawn_server, stop_server

ENTITY, PROJECT_NAME = "bench-entity", "stream"
PROJECT = f"{ENTITY}/{PROJECT_NAME}"
_FILL_BATCH = 2000
_T0_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
_CLK_TCK = os.sysconf("SC_CLK_TCK")
# a line starts with the call's project and id (CallSchema's field order)
_CALL_ID = re.compile(rb'^\{"project_id":"[^"]*","id":"([^"]+)"', re.MULTILINE)


def _iso(us: int) -> str:
    seconds, micros = divmod(us, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"


def _call(i: int) -> dict[str, Any]:
    small = profile("small")
    call_id = f"01930000-0000-7000-8000-{i:012x}"
    started = _T0_US + i * 1000
    return small.complete_call(
        i % 5000, project_id=PROJECT, call_id=call_id, trace_id=call_id,
        started_at=_iso(started), ended_at=_iso(started + 500),
    )  # fmt: skip


def _post(url: str, body: bytes) -> None:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        response.read()


def fill(url: str, n_calls: int) -> float:
    """Store ``n_calls`` complete calls; returns the seconds it took."""
    began = time.perf_counter()
    route = f"{url}/v2/{ENTITY}/{PROJECT_NAME}/calls/complete"
    for first in range(0, n_calls, _FILL_BATCH):
        batch = [_call(i) for i in range(first, min(first + _FILL_BATCH, n_calls))]
        _post(route, msgspec.json.encode({"batch": batch}))
    return time.perf_counter() - began


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime + stime


def stream_all(url: str, pid: int, expected: int) -> dict[str, Any]:
    """Read every call with one stream; checks the count and the order (ids grow with
    start time in this data set)."""
    body = msgspec.json.encode({"project_id": PROJECT})
    request = urllib.request.Request(
        url + "/calls/stream_query", data=body,
        headers={"Content-Type": "application/json", "Accept": "application/jsonl"},
    )  # fmt: skip
    cpu_before, began = _cpu_s(pid), time.perf_counter()
    rows, first_row_s, ids, tail = 0, None, [], b""
    with urllib.request.urlopen(request, timeout=3600) as response:
        # big reads and one regex per read: the client must cost the server's cores little
        while chunk := response.read1(1 << 20):
            if first_row_s is None:
                first_row_s = time.perf_counter() - began
            lines = tail + chunk
            cut = lines.rfind(b"\n") + 1
            ids.extend(_CALL_ID.findall(lines, 0, cut))
            rows += lines.count(b"\n", 0, cut)
            tail = lines[cut:]
    elapsed_s = time.perf_counter() - began
    cpu_s = _cpu_s(pid) - cpu_before
    return {
        "rows": rows, "rows_ok": rows == expected == len(ids) and ids == sorted(ids), "elapsed_s": elapsed_s,
        "rows_per_s": rows / elapsed_s if elapsed_s else 0.0,
        "server_cpu_s_per_1k_rows": 1000 * cpu_s / max(rows, 1),
        "first_row_s": first_row_s,
    }  # fmt: skip


def run_size(n_calls: int, repeat: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="engine-bench-stream-") as folder:
        proc, url = spawn_server(Path(folder) / "traces.db")
        try:
            fill_s = fill(url, n_calls)
            runs = [stream_all(url, proc.pid, n_calls) for _ in range(repeat)]
        finally:
            stop_server(proc)
    median = {k: statistics.median(r[k] for r in runs)
              for k in ("rows_per_s", "server_cpu_s_per_1k_rows", "first_row_s", "elapsed_s")}
    return {
        "record": "median", "stored_calls": n_calls, "repeat": repeat, "fill_s": fill_s,
        "rows_ok": all(r["rows_ok"] for r in runs), **median,
        "rows_per_s_min": min(r["rows_per_s"] for r in runs),
        "rows_per_s_max": max(r["rows_per_s"] for r in runs),
        "runs": runs,
    }  # fmt: skip


def table(results: list[dict[str, Any]]) -> str:
    best = max(r["rows_per_s"] for r in results)
    lines = [
        "| stored calls | rows/s (median, min–max) | vs best | server CPU s per 1k rows "
        "| first row | rows right |",
        "|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['stored_calls']:,} | {r['rows_per_s']:,.0f} ({r['rows_per_s_min']:,.0f}–"
            f"{r['rows_per_s_max']:,.0f}) | {r['rows_per_s'] / best:.2f} | "
            f"{r['server_cpu_s_per_1k_rows']:.3f} | {r['first_row_s'] * 1000:.0f} ms | "
            f"{'yes' if r['rows_ok'] else 'NO'} |"
        )
    spread = min(r["rows_per_s"] for r in results) / best
    lines.append(f"\nslowest size at {spread:.0%} of the fastest (target: within 20%, "
                 "and >= 50,000 rows/s everywhere)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.server_stream", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000,1000000",
                        help="stored call counts, comma-separated")
    parser.add_argument("--repeat", type=int, default=3, help="streams per size (median)")
    parser.add_argument("--out", default="bench/results/server_stream.jsonl")
    args = parser.parse_args(argv)
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        result = run_size(size, args.repeat)
        print(f"{size:>9,} calls: {result['rows_per_s']:,.0f} rows/s "
              f"(fill {result['fill_s']:.1f} s)", file=sys.stderr, flush=True)
        results.append(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for record in (machine_info(), *results):
            f.write(json.dumps(record) + "\n")
    print(table(results))
    return 0 if all(r["rows_ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
