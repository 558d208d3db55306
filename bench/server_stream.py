"""Rows/s of ``calls_query_stream`` against ``engine serve`` (SQLite) at growing store sizes.

    python -m bench.server_stream                          # 1k, 10k, 100k, 1M stored calls
    python -m bench.server_stream --sizes 1000,10000 --repeat 3 --min-rows 100000

For each size a fresh ``engine serve`` child (its own SQLite file in a temporary folder)
is filled through ``/v2/{entity}/{project}/calls/complete`` with small profile calls
(~0.8 KB each, ``bench/payloads.py``). Every size is filled first, each server then gets
one untimed stream of an empty project (``warm_up``), and the sizes are streamed in turn,
``--repeat`` rounds, so that load from elsewhere on a shared box falls on all of them
alike. A run reads every call with unlimited ``POST /calls/stream_query`` requests (the
default order, by start time), each a whole stream, back to back on one kept-alive
connection until it has read ``--min-rows`` (1k stored calls: 100 streams; 1M: one).

Figures per size (medians of the runs): rows/s (rows over the wall time from sending each
request to its last byte), the server's CPU microseconds per row (``/proc`` schedstat of
its threads; the user/system split in ticks), this client's CPU per row (it shares the
box's cores with the server), the bytes the server read from disk and its major page
faults (0 when the file is in the page cache), time to the first row, the load average at
each run's start, and whether every stream's row count and order were right. Prints a
markdown table and writes JSON lines to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import urllib.parse
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
_LINE_START = b'{"project_id":"' + PROJECT.encode() + b'","id":"'


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


def _cpu_s(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK


def _cpu_exact_s(pid: int) -> float:
    """CPU seconds of a process's threads to the nanosecond (``schedstat``): a stream of 1k
    rows takes a few ticks of ``/proc/PID/stat``."""
    return sum(int((task / "schedstat").read_text().split()[0])
               for task in Path(f"/proc/{pid}/task").iterdir()) / 1e9  # fmt: skip


def _disk(pid: int) -> tuple[int, int]:
    """(bytes read from storage, major page faults) of a process so far."""
    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    majflt = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[9])
    return int(io["read_bytes"]), majflt


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _line_ids(lines: bytes) -> list[bytes]:
    """The id of each complete line (None for a line that does not start as a call of the
    bench's project does): split and sliced, so the client costs the shared cores little."""
    start = len(_LINE_START)
    return [line[start : line.find(b'"', start)] if line.startswith(_LINE_START) else None
            for line in lines.split(b"\n")[:-1]]  # fmt: skip


def _stream_once(conn: http.client.HTTPConnection, expected: int) -> tuple[bool, float, float]:
    """One stream of every call: (count and order right, seconds to its first row, seconds)."""
    began = time.perf_counter()
    conn.request("POST", "/calls/stream_query", msgspec.json.encode({"project_id": PROJECT}),
                 {"Content-Type": "application/json", "Accept": "application/jsonl"})  # fmt: skip
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"stream_query answered {response.status}: {response.read()[:200]!r}")
    first_row_s, ids, tail = 0.0, [], b""
    while chunk := response.read1(1 << 20):  # big reads: few calls per row
        if not ids:
            first_row_s = time.perf_counter() - began
        lines = tail + chunk
        cut = lines.rfind(b"\n") + 1
        ids.extend(_line_ids(lines[:cut]))
        tail = lines[cut:]
    elapsed_s = time.perf_counter() - began
    # ids grow with start time in this data set
    rows_ok = len(ids) == expected and not tail and None not in ids and ids == sorted(ids)
    return rows_ok, first_row_s, elapsed_s


def stream_all(url: str, pid: int, expected: int, streams: int = 1) -> dict[str, Any]:
    """Read every call ``streams`` times back to back (each one a whole request, on one
    kept-alive connection as weave's client keeps them), checking each one's count and
    order; figures over all of them."""
    address = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(address.hostname, address.port, timeout=3600)
    (user0, sys0), cpu0, disk0, own0 = _cpu_s(pid), _cpu_exact_s(pid), _disk(pid), _own_cpu_s()
    try:
        each = [_stream_once(conn, expected) for _ in range(streams)]
    finally:
        conn.close()
    (user1, sys1), cpu1, disk1, own1 = _cpu_s(pid), _cpu_exact_s(pid), _disk(pid), _own_cpu_s()
    rows, elapsed_s = expected * streams, sum(e[2] for e in each)
    per_row_us = 1e6 / max(rows, 1)
    return {
        "rows": rows, "streams": streams, "elapsed_s": elapsed_s,
        "rows_ok": all(e[0] for e in each),
        "rows_per_s": rows / elapsed_s if elapsed_s else 0.0,
        "server_cpu_us_per_row": (cpu1 - cpu0) * per_row_us,
        "server_user_us_per_row": (user1 - user0) * per_row_us,
        "server_sys_us_per_row": (sys1 - sys0) * per_row_us,
        "client_cpu_us_per_row": (own1 - own0) * per_row_us,
        "server_disk_read_bytes": disk1[0] - disk0[0], "server_major_faults": disk1[1] - disk0[1],
        "first_row_s": statistics.median(e[1] for e in each),
    }  # fmt: skip


_MEDIANS = ("rows_per_s", "server_cpu_us_per_row", "server_user_us_per_row",
            "server_sys_us_per_row", "client_cpu_us_per_row", "first_row_s", "elapsed_s",
            "load_avg_1m")


def warm_up(url: str) -> float:
    """One stream of an empty project, untimed: the first stream of a server process opens
    its SQLite connection and runs code for the first time (a few ms, once per process,
    which would otherwise land on the first timed stream of the smallest sizes)."""
    request = urllib.request.Request(
        url + "/calls/stream_query", data=msgspec.json.encode({"project_id": f"{ENTITY}/warm-up"}),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    began = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
    return time.perf_counter() - began


def summary(n_calls: int, fill_s: float, warm_up_s: float, runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "record": "median", "stored_calls": n_calls, "repeat": len(runs), "fill_s": fill_s,
        "warm_up_s": warm_up_s, "rows_ok": all(r["rows_ok"] for r in runs),
        **{k: statistics.median(r[k] for r in runs) for k in _MEDIANS},
        "rows_per_s_min": min(r["rows_per_s"] for r in runs),
        "rows_per_s_max": max(r["rows_per_s"] for r in runs),
        "server_disk_read_bytes": sum(r["server_disk_read_bytes"] for r in runs),
        "server_major_faults": sum(r["server_major_faults"] for r in runs),
        "runs": runs,
    }  # fmt: skip


def run_sizes(sizes: list[int], repeat: int, min_rows: int) -> list[dict[str, Any]]:
    """Fill one server per size, then stream them in turn, ``repeat`` rounds: a spell of
    load from elsewhere on a shared box then falls on every size, not on one. A run of a
    size streams it back to back until it has read ``min_rows`` (1k calls: 100 streams):
    a stream of 1k rows lasts a few ms, where one scheduler delay is the whole figure."""
    with contextlib.ExitStack() as stack:
        servers = []
        for n_calls in sizes:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="engine-bench-stream-"))
            proc, url = spawn_server(Path(folder) / "traces.db")
            stack.callback(stop_server, proc)
            fill_s = fill(url, n_calls)
            print(f"{n_calls:>9,} calls stored in {fill_s:.1f} s", file=sys.stderr, flush=True)
            servers.append((n_calls, proc.pid, url, fill_s, warm_up(url)))
        runs: dict[int, list[dict[str, Any]]] = {n_calls: [] for n_calls in sizes}
        for _ in range(repeat):
            for n_calls, pid, url, _, _ in servers:
                runs[n_calls].append({"load_avg_1m": os.getloadavg()[0],
                                      **stream_all(url, pid, n_calls, -(-min_rows // n_calls))})  # fmt: skip
    return [summary(n, fill_s, warm_s, runs[n]) for n, _, _, fill_s, warm_s in servers]


def table(results: list[dict[str, Any]]) -> str:
    best = max(r["rows_per_s"] for r in results)
    lines = [
        "| stored calls | rows/s (median, min–max) | vs best | server CPU µs/row (user+sys in ticks) "
        "| client CPU µs/row | disk read, major faults | first row | load (1 min) | rows right |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['stored_calls']:,} | {r['rows_per_s']:,.0f} ({r['rows_per_s_min']:,.0f}–"
            f"{r['rows_per_s_max']:,.0f}) | {r['rows_per_s'] / best:.2f} | "
            f"{r['server_cpu_us_per_row']:.1f} ({r['server_user_us_per_row']:.1f}+"
            f"{r['server_sys_us_per_row']:.1f}) | {r['client_cpu_us_per_row']:.1f} | "
            f"{r['server_disk_read_bytes'] / 1e6:.1f} MB, {r['server_major_faults']} | "
            f"{r['first_row_s'] * 1000:.0f} ms | {r['load_avg_1m']:.1f} | "
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
    parser.add_argument("--repeat", type=int, default=3, help="runs per size (median)")
    parser.add_argument("--min-rows", type=int, default=100_000,
                        help="a run streams a size back to back until it read this many rows")
    parser.add_argument("--out", default="bench/results/server_stream.jsonl")
    args = parser.parse_args(argv)
    results = run_sizes([int(s) for s in args.sizes.split(",")], args.repeat, args.min_rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for record in (machine_info(), *results):
            f.write(json.dumps(record) + "\n")
    print(table(results))
    return 0 if all(r["rows_ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
