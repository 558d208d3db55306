"""The stores of ``engine serve`` side by side: SQLite vs ClickHouse, in one run.

    python -m bench.store_clickhouse                    # 1M calls, small profile (~0.8 KB)
    python -m bench.store_clickhouse --calls 200000 --profile eval

For each store, on the same calls (``bench.payloads``; decoded once into the raw ingest
models ``engine serve`` hands its store, so the decode is not timed): ingest through
``Store.insert_calls`` in batches of ``--batch`` complete calls, ``--writers`` batches in
flight at once (as an ``engine serve`` with several requests open: by default the bodies
of two senders, 2 MB each, 8 in flight each); then
``calls_query_stats`` (``count_calls``) over everything stored; then a streaming read of
every call in the default order (``query_calls``, the path of ``/calls/stream_query``).

Stores: ``sqlite`` (a file in a temporary folder), ``clickhouse`` (the local ClickHouse
server, ``engine.server.clickhouse.local_server``, in its own process, over HTTP), and
``chdb`` (ClickHouse embedded in this process). Prints one JSON line per store and a
markdown table, and appends the lines to ``--out`` after a line describing the machine.
Wall-clock figures on a shared 2-core box are noisy: run it more than once.
CPU per call is given apart for this process (the store's Python side; for chdb also the
embedded engine) and for the local ClickHouse server process (``clickhouse`` only), from
getrusage and /proc: what a dedicated machine could do does not depend on the neighbours.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import resource
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec

from bench.harness import machine_info
from bench.payloads import profile as payload_profile
from engine.server._ingest_models import RawCallsCompleteReq, decode_ingest
from engine.server._sqlite_store import SQLiteStore
from engine.server._store import CallsQuery, Store

PROJECT = "bench-entity/bench-project"
_T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def _batches(n_calls: int, batch: int, profile_name: str) -> list[list[Any]]:
    """The calls as decoded ingest batches, ready for ``insert_calls``."""
    prof = payload_profile(profile_name)
    distinct = [prof.complete_call(i, project_id=PROJECT, call_id="", trace_id="",
                                   started_at="", ended_at="") for i in range(1000)]  # fmt: skip
    out = []
    for first in range(0, n_calls, batch):
        calls = []
        for i in range(first, min(n_calls, first + batch)):
            t = _T0 + dt.timedelta(microseconds=i * 10)
            call = {**distinct[i % len(distinct)], "id": f"{i:032x}", "trace_id": f"{i // 10:032x}",
                    "started_at": t.isoformat(), "ended_at": (t + dt.timedelta(seconds=1)).isoformat()}  # fmt: skip
            calls.append(call)
        out.append(decode_ingest(msgspec.json.encode({"batch": calls}), RawCallsCompleteReq).batch)
    return out


async def _ingest(store: Store, batches: list[list[Any]], writers: int) -> float:
    queue = list(reversed(batches))

    async def writer() -> None:
        while queue:
            await store.insert_calls([], [], queue.pop())

    t0 = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(writers)))
    return time.perf_counter() - t0


class _Cpu:
    """CPU seconds of this process (every thread: chdb's too) plus the ClickHouse server's,
    so a figure on a shared box can be read as CPU per call, not only wall time."""

    def __init__(self, server_pid: int | None) -> None:
        self._pid = server_pid
        self._tick_s = 1 / os.sysconf("SC_CLK_TCK")

    def _server_s(self) -> float:
        if self._pid is None:
            return 0.0
        fields = Path(f"/proc/{self._pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * self._tick_s  # utime, stime

    def now(self) -> tuple[float, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime, self._server_s()


def _spent(cpu: _Cpu, before: tuple[float, float], per: int) -> dict[str, float]:
    after = cpu.now()
    return {"engine_us": round((after[0] - before[0]) / per * 1e6, 2),
            "server_us": round((after[1] - before[1]) / per * 1e6, 2)}  # fmt: skip


async def _measure(name: str, store: Store, batches: list[list[Any]], writers: int,
                   cpu: _Cpu) -> dict[str, Any]:  # fmt: skip
    n_calls = sum(len(b) for b in batches)
    c0 = cpu.now()
    ingest_s = await _ingest(store, batches, writers)
    ingest_cpu = _spent(cpu, c0, n_calls)
    t0, c0 = time.perf_counter(), cpu.now()
    count = await store.count_calls(CallsQuery(project_id=PROJECT))
    count_s = time.perf_counter() - t0
    count_cpu = _spent(cpu, c0, max(count, 1))
    t0, read, c0 = time.perf_counter(), 0, cpu.now()
    async for page in store.query_calls(CallsQuery(project_id=PROJECT)):
        read += len(page)
    read_s = time.perf_counter() - t0
    read_cpu = _spent(cpu, c0, max(read, 1))
    assert count == read == n_calls, (name, count, read, n_calls)
    return {
        "store": name, "calls": n_calls, "ingest_calls_per_s": round(n_calls / ingest_s),
        "ingest_cpu_us_per_call": ingest_cpu,
        "query_stats_s": round(count_s, 3), "query_stats_cpu_us_per_call": count_cpu,
        "stream_rows_per_s": round(read / read_s),
        "stream_cpu_us_per_row": read_cpu,
    }  # fmt: skip


async def _run_store(name: str, folder: Path, batches: list[list[Any]], writers: int,
                     clickhouse_url: str | None, server_pid: int) -> dict[str, Any]:  # fmt: skip
    if name == "sqlite":
        store: Store = SQLiteStore(folder / "bench.db")
    else:
        from engine.server.clickhouse import ClickHouseStore, parse_store_url

        url = clickhouse_url if name == "clickhouse" else f"chdb://{folder / 'chdb'}"
        store = ClickHouseStore(parse_store_url(url))
    try:
        cpu = _Cpu(server_pid if name == "clickhouse" else None)
        return await _measure(name, store, batches, writers, cpu)
    finally:
        await store.close()


def _table(results: list[dict[str, Any]]) -> str:
    lines = ["| store | calls | ingest calls/s | ingest CPU µs/call (engine + ClickHouse server) "
             "| calls_query_stats (s) | its CPU µs/call (engine + server) | streamed rows/s "
             "| stream CPU µs/row (engine + server) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in results:
        ic, qc, sc = r["ingest_cpu_us_per_call"], r["query_stats_cpu_us_per_call"], r["stream_cpu_us_per_row"]
        lines.append(f"| {r['store']} | {r['calls']:,} | {r['ingest_calls_per_s']:,} | "
                     f"{ic['engine_us']} + {ic['server_us']} | {r['query_stats_s']} | "
                     f"{qc['engine_us']} + {qc['server_us']} | "
                     f"{r['stream_rows_per_s']:,} | {sc['engine_us']} + {sc['server_us']} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.store_clickhouse", description=__doc__)
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=2_500,
                        help="calls per request (a sender's 2 MB body holds ~2,500 small calls)")
    parser.add_argument("--writers", type=int, default=16,
                        help="requests in flight at once (a sender keeps up to 8)")  # fmt: skip
    parser.add_argument("--profile", default="small", help="small (~0.8 KB), eval (~4 KB)")
    parser.add_argument("--stores", default="sqlite,clickhouse,chdb")
    parser.add_argument("--out", default="bench/results/store_clickhouse.jsonl",
                        help="appended: the machine (cores, load, commit), then one line per store")  # fmt: skip
    args = parser.parse_args(argv)
    batches = _batches(args.calls, args.batch, args.profile)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        folder = Path(tmp)
        from engine.server.clickhouse._process import local_clickhouse

        with local_clickhouse(folder / "server") as server:
            url = server.store_url(f"bench_{uuid.uuid4().hex[:8]}")
            for name in args.stores.split(","):
                result = asyncio.run(_run_store(name, folder, batches, args.writers, url,
                                                server.proc.pid))  # fmt: skip
                result.update(profile=args.profile, batch=args.batch, writers=args.writers,
                              load_1min=round(os.getloadavg()[0], 2))  # fmt: skip
                print(json.dumps(result), flush=True)
                results.append(result)
    with Path(args.out).open("a") as f:
        for record in (machine_info(), *results):
            f.write(json.dumps(record) + "\n")
    print(_table(results))


if __name__ == "__main__":
    main()
