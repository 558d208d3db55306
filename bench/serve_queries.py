"""What a trace view waits for from ``engine serve`` (SQLite) once it holds many calls.

    python -m bench.serve_queries                       # 1M calls, 5 runs per query
    python -m bench.serve_queries --calls 200000 --repeat 3 --ids uuid4

Writes ``--calls`` eval calls as weave's client traces an evaluation (traces of five:
``Evaluation.evaluate`` → ``predict_and_score`` → ``Model.predict`` and two scorers; ids
UUIDv7 as weave makes them, or ``--ids uuid4`` for a client whose ids are random; ~1 KB
per call, 2% errors) to a JSON-lines file, loads it with ``engine ingest`` into a fresh
``engine serve`` (its own SQLite file) and reports the load's calls/s. Then each query the
trace views send (the weave UI's and ``engine serve``'s own browser: root calls newest
first and their count, an op's calls, one trace, a call's children, a deep page, errors,
the slowest calls, text search) runs ``--repeat`` times on one kept-alive connection: the
median wall time to its last byte, the server's CPU for it (``/proc`` schedstat of its
threads), and whether its answer is right (counts, order, filters: the bench fails
otherwise). Prints a markdown table; writes JSON lines to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from bench.harness import machine_info
from bench.scenarios.pipes import _ingest_rate
from bench.server_stream import _cpu_exact_s
from engine.server import spawn_server, stop_server
from engine.wire._codec import uuid7

PROJECT = "bench-entity/serve-queries"
OPS = ("Evaluation.evaluate", "Evaluation.predict_and_score", "Model.predict", "exact_match",
       "f1_score")  # fmt: skip
_T0 = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)


def op_ref(op: str) -> str:
    return f"weave:///{PROJECT}/op/{op}:0123456789abcdef"


def write_calls(path: Path, n_calls: int, ids: Callable[[], str]) -> None:
    """``n_calls`` (a multiple of 5) complete calls, one trace of five per evaluated row."""
    encoder, rnd = msgspec.json.Encoder(), random.Random(1)
    with path.open("wb") as out:
        for i in range(0, n_calls, len(OPS)):
            trace_id, root_id, row_id = ids(), ids(), ids()
            parents = (None, root_id, row_id, row_id, row_id)
            for k, op in enumerate(OPS):
                started = _T0 + dt.timedelta(milliseconds=10 * i + k)
                ended = started + dt.timedelta(milliseconds=rnd.randint(1, 500))
                call = {
                    "mode": "complete", "project_id": PROJECT,
                    "id": (root_id, row_id)[k] if k < 2 else ids(), "trace_id": trace_id,
                    "parent_id": parents[k], "op_name": op_ref(op),
                    "started_at": started.isoformat().replace("+00:00", "Z"),
                    "ended_at": ended.isoformat().replace("+00:00", "Z"),
                    "attributes": {"weave": {"client_version": "0.54.0"}, "row": i // 5},
                    "inputs": {"question": f"What is {i + k} + {k}? " * 3,
                               "context": "x" * rnd.randint(100, 600)},
                    "output": {"answer": str(i + k), "score": rnd.random()},
                    "exception": "ValueError: boom" if rnd.random() < 0.02 else None,
                    "summary": {"usage": {"gpt-4o": {"requests": 1,
                                                     "prompt_tokens": rnd.randint(10, 900),
                                                     "completion_tokens": rnd.randint(1, 200)}}},
                }  # fmt: skip
                out.write(encoder.encode(call) + b"\n")


def _latency(call: dict[str, Any]) -> float:
    return call["summary"]["weave"]["latency_ms"]


def _newest_first(calls: list[dict[str, Any]]) -> bool:
    times = [dt.datetime.fromisoformat(c["started_at"].replace("Z", "+00:00")) for c in calls]
    return times == sorted(times, reverse=True)


def queries(n_calls: int, root: dict[str, Any]) -> list[tuple[str, str, dict[str, Any], Callable[[Any], bool]]]:
    """(name, route, body, is the answer right) of each query; ``root`` is the newest root.
    A page at an offset ``limit`` past another is timed after that one was read once (as
    weave's client reads a list: page after page)."""
    p, newest = PROJECT, [{"field": "started_at", "direction": "desc"}]
    roots = {"trace_roots_only": True}
    needle = n_calls // 2 + 3  # one call's question holds "What is <needle> +"
    page = min(1000, n_calls // 10)  # weave's client reads pages of 1,000
    return [
        ("root calls, newest 50", "/calls/stream_query",
         {"project_id": p, "filter": roots, "sort_by": newest, "limit": 50},
         lambda c: len(c) == 50 and all(x["parent_id"] is None for x in c) and _newest_first(c)),
        ("count of root calls", "/calls/query_stats", {"project_id": p, "filter": roots},
         lambda s: s["count"] == n_calls // 5),
        ("count of all calls", "/calls/query_stats", {"project_id": p},
         lambda s: s["count"] == n_calls),
        ("newest 50 calls", "/calls/stream_query", {"project_id": p, "sort_by": newest, "limit": 50},
         lambda c: len(c) == 50 and _newest_first(c)),
        ("one op's calls, newest 50", "/calls/stream_query",
         {"project_id": p, "filter": {"op_names": [op_ref("f1_score")]}, "sort_by": newest, "limit": 50},
         lambda c: len(c) == 50 and {x["op_name"] for x in c} == {op_ref("f1_score")} and _newest_first(c)),
        ("count of one op's calls", "/calls/query_stats",
         {"project_id": p, "filter": {"op_names": [op_ref("f1_score")]}},
         lambda s: s["count"] == n_calls // 5),
        ("one trace", "/calls/stream_query", {"project_id": p, "filter": {"trace_ids": [root["trace_id"]]}},
         lambda c: len(c) == 5 and {x["trace_id"] for x in c} == {root["trace_id"]}),
        ("a call's children", "/calls/stream_query", {"project_id": p, "filter": {"parent_ids": [root["id"]]}},
         lambda c: len(c) == 1 and c[0]["parent_id"] == root["id"]),
        ("50 calls at offset calls/2", "/calls/stream_query",
         {"project_id": p, "limit": 50, "offset": n_calls // 2}, lambda c: len(c) == 50),
        (f"next {page:,} after calls/2 (weave's get_calls pages)", "/calls/stream_query",
         {"project_id": p, "limit": page, "offset": n_calls // 2 + page},
         lambda c: len(c) == page),
        ("errors, first 50", "/calls/stream_query",
         {"project_id": p, "limit": 50, "query": {"$expr": {"$eq": [
             {"$getField": "summary.weave.status"}, {"$literal": "error"}]}}},
         lambda c: 0 < len(c) <= 50 and all(x["exception"] for x in c)),
        ("count of errors", "/calls/query_stats",
         {"project_id": p, "query": {"$expr": {"$eq": [
             {"$getField": "summary.weave.status"}, {"$literal": "error"}]}}},
         lambda s: 0 < s["count"] < n_calls // 10),
        ("slowest 50 (sort by latency)", "/calls/stream_query",
         {"project_id": p, "limit": 50, "sort_by": [{"field": "summary.weave.latency_ms", "direction": "desc"}]},
         lambda c: len(c) == 50 and [_latency(x) for x in c] == sorted((_latency(x) for x in c), reverse=True)),
        ("text search in inputs", "/calls/stream_query",
         {"project_id": p, "limit": 50, "query": {"$expr": {"$contains": {
             "input": {"$getField": "inputs.question"}, "substr": {"$literal": f"What is {needle} +"}}}}},
         lambda c: len(c) == 1),
    ]  # fmt: skip


def _ask(conn: http.client.HTTPConnection, route: str, body: dict[str, Any]) -> Any:
    conn.request("POST", route, msgspec.json.encode(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"{route} answered {response.status}: {data[:300]!r}")
    if route == "/calls/stream_query":
        return [json.loads(line) for line in data.splitlines() if line]
    return json.loads(data)


def measure(url: str, pid: int, n_calls: int, repeat: int) -> list[dict[str, Any]]:
    address = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(address.hostname, address.port, timeout=600)
    try:
        (root,) = _ask(conn, "/calls/stream_query", {
            "project_id": PROJECT, "filter": {"trace_roots_only": True}, "limit": 1,
            "sort_by": [{"field": "started_at", "direction": "desc"}]})  # fmt: skip
        results = []
        for name, route, body, right in queries(n_calls, root):
            if body.get("offset", 0) >= body.get("limit", 0) > 50:  # the page before, once
                _ask(conn, route, {**body, "offset": body["offset"] - body["limit"]})
            walls, cpus, ok = [], [], True
            for _ in range(repeat):
                cpu0, began = _cpu_exact_s(pid), time.perf_counter()
                answer = _ask(conn, route, body)
                walls.append(time.perf_counter() - began)
                cpus.append(_cpu_exact_s(pid) - cpu0)
                ok = ok and right(answer)
            results.append({"record": "query", "query": name, "route": route,
                            "wall_ms": statistics.median(walls) * 1000,
                            "wall_ms_max": max(walls) * 1000,
                            "server_cpu_ms": statistics.median(cpus) * 1000, "right": ok})  # fmt: skip
        return results
    finally:
        conn.close()


def run(n_calls: int, repeat: int, ids: str, timeout_s: float,
        store: str = "sqlite") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    make_id = uuid7 if ids == "uuid7" else (lambda: str(uuid.uuid4()))
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="engine-bench-queries-")))
        calls = work / "calls.jsonl"
        write_calls(calls, n_calls, make_id)
        proc, url = spawn_server(work / "traces.db",
                                 store=f"chdb:///{work / 'chdb'}" if store == "chdb" else store)
        stack.callback(stop_server, proc)
        done = subprocess.run(
            [sys.executable, "-m", "engine", "ingest", str(calls), "--to", url, "--no-progress",
             "--checkpoint", str(work / "checkpoint")],
            capture_output=True, text=True, timeout=timeout_s,
            env={**os.environ, "ENGINE_DEAD_LETTER_PATH": str(work / "dead.jsonl")})  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"engine ingest exited {done.returncode}: {done.stderr[-500:]}")
        load = {"record": "load", "calls": n_calls, "ids": ids, "store": store,
                "ingest_calls_per_s": _ingest_rate(done.stdout),
                "db_bytes": sum(f.stat().st_size for f in work.rglob("*")
                                if f.is_file() and f.parent.name != "checkpoint"
                                and f.name not in ("calls.jsonl", "dead.jsonl"))}  # fmt: skip
        return load, measure(url, proc.pid, n_calls, repeat)


def table(load: dict[str, Any], results: list[dict[str, Any]]) -> str:
    lines = [f"{load['calls']:,} calls (ids {load['ids']}) loaded into {load['store']} by `engine ingest` at "
             f"{load['ingest_calls_per_s']:,.0f} calls/s; database {load['db_bytes'] / 1e9:.2f} GB",
             "", "| query | wall ms (median, max) | server CPU ms | answer right |",
             "|---|---:|---:|:---:|"]  # fmt: skip
    for r in results:
        lines.append(f"| {r['query']} | {r['wall_ms']:.1f} ({r['wall_ms_max']:.1f}) | "
                     f"{r['server_cpu_ms']:.1f} | {'yes' if r['right'] else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve_queries", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1_000_000, help="a multiple of 5")
    parser.add_argument("--repeat", type=int, default=5, help="runs per query (median)")
    parser.add_argument("--ids", choices=("uuid7", "uuid4"), default="uuid7")
    parser.add_argument("--store", choices=("sqlite", "chdb"), default="sqlite",
                        help="engine serve's store (chdb: ClickHouse embedded in the server)")
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="for the load")
    parser.add_argument("--out", default="bench/results/serve_queries.jsonl")
    args = parser.parse_args(argv)
    if args.calls < 500 or args.calls % len(OPS):
        parser.error(f"--calls: a multiple of {len(OPS)} of at least 500, got {args.calls}")
    load, results = run(args.calls, args.repeat, args.ids, args.timeout_s, args.store)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for record in (machine_info(), load, *results):
            f.write(json.dumps(record) + "\n")
    print(table(load, results))
    return 0 if all(r["right"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
