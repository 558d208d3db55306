"""Many calls open at once in one process: what they cost the producer and the wire.

    python -m bench.open_calls                          # --open 100,1000,10000 --calls 40000
    python -m bench.open_calls --open 10000 --calls 40000 --store sqlite
    python -m bench.open_calls --server weave-merged --rate 2500   # weave's routing

An asyncio eval that gathers thousands of examples, each an async ``@tracer.op`` awaiting a
(rate-limited) model, has thousands of calls started and not yet ended. Here one process
traces ``--calls`` calls through an async op while keeping ``--open`` of them open: each
call awaits a gate, and once ``--open`` are waiting the oldest is let through (it ends).
Each run has an ``engine serve`` of its own (``--store count`` by default). Reported per
run: the producer's wall time and CPU per call (the eval loop's process; the sender is
another), the flush after it, ingest requests by route as the server counted them, the
starts the sender sent on their own, and (``--store sqlite``) whether every call was
stored with its end. Prints a markdown table and one JSON line per run.

``--server weave-merged`` / ``weave-complete`` / ``weave-empty`` runs against
``bench.weave_routing`` instead: a server that routes ingest as weave's does (it does not
say it takes upsert batches; a project's calls go to the table they are already in), the
project's calls already in the legacy table, in calls_complete, or none yet, answering each
ingest request ``--delay-ms`` late (a server across a network). It stores nothing; it
reports which calls arrived whole.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import engine
from engine.common._config import _parse_env
from engine.server import serve_subprocess

PROJECT = "bench/open-calls"
_ROUTES = ("requests_calls_complete", "requests_upsert_batch", "requests_call_start",
           "requests_call_end")


@contextlib.contextmanager
def _weave_routing(residence: str, delay_ms: float) -> Any:
    """``bench.weave_routing`` as a child process (the project's calls already in
    ``residence``, or none yet: ``empty``; answering ``delay_ms`` late); its URL."""
    argv = [sys.executable, "-m", "bench.weave_routing", "--delay-ms", str(delay_ms)]
    if residence != "empty":
        argv += ["--residence", f"{PROJECT}={residence}"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if not line.startswith("listening on "):
            raise RuntimeError(f"bench.weave_routing did not start: {line!r}")
        yield line.split()[-1]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stdout.close()


def _server(server: str, store: str, db: Path | None, delay_ms: float) -> Any:
    if server == "serve":
        return serve_subprocess(db, store=store)
    return _weave_routing(server.removeprefix("weave-"), delay_ms)


def _server_stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/stats", timeout=30) as reply:
        return json.load(reply)


def _stored(url: str) -> tuple[int, int]:
    """(calls stored, calls stored with their end) in the project."""
    body = json.dumps({"project_id": PROJECT, "columns": ["id", "ended_at"]}).encode()
    request = urllib.request.Request(url + "/calls/stream_query", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as reply:
        rows = [json.loads(line) for line in reply.read().splitlines()]
    return len(rows), sum(1 for row in rows if row.get("ended_at"))


async def _produce(tracer: Any, calls: int, open_calls: int, rate: float,
                   prompt: str) -> None:
    """``calls`` op calls, ``open_calls`` of them open at once (ended oldest first), at most
    ``rate`` ended per second (0: as fast as they can)."""
    loop = asyncio.get_running_loop()
    gates: dict[int, asyncio.Future] = {}
    began = loop.time()

    @tracer.op
    async def predict(example: int, prompt: str) -> str:
        await gates[example]
        return prompt[:100]

    running: collections.deque[tuple[int, asyncio.Task]] = collections.deque()
    for example in range(calls):
        gates[example] = loop.create_future()
        running.append((example, loop.create_task(predict(example, prompt))))
        await asyncio.sleep(0)  # the task runs to its gate: its call is open
        if len(running) >= open_calls:
            ahead_s = began + (example - open_calls) / rate - loop.time() if rate else 0
            if ahead_s > 0.001:  # the model's rate limit: this answer is not due yet
                await asyncio.sleep(ahead_s)
            oldest, task = running.popleft()
            gates.pop(oldest).set_result(None)
            await task
    for example, task in running:
        gates.pop(example).set_result(None)
        await task


def run_one(store: str, calls: int, open_calls: int, settings: dict[str, Any], rate: float = 0,
            prompt_bytes: int = 1000, server_kind: str = "serve",
            delay_ms: float = 0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-open-") as state_dir:
        db = Path(state_dir, "traces.db") if store == "sqlite" else None
        with _server(server_kind, store, db, delay_ms) as url:
            with engine.Engine(url=url, project=PROJECT, **settings) as eng:
                tracer = eng.producer()
                wall0, cpu0 = time.perf_counter(), time.process_time()
                asyncio.run(_produce(tracer, calls, open_calls, rate, "p" * prompt_bytes))
                produce_s = time.perf_counter() - wall0
                cpu_s = time.process_time() - cpu0
                flushed = eng.flush(timeout_s=600)
                flush_s = time.perf_counter() - wall0 - produce_s
                stats = eng.stats()
            server = _server_stats(url)
            if server_kind != "serve":
                stored = (server["calls_started"], server["calls_whole"])
            else:
                stored = _stored(url) if store == "sqlite" else (None, None)
    return {
        "server": server_kind, "delay_ms": delay_ms, "store": store, "calls": calls, "open": open_calls, "rate": rate,
        "floor_s": round(max(0, calls - open_calls) / rate, 2) if rate else 0,
        "produce_s": round(produce_s, 2), "producer_cpu_us_per_call": round(cpu_s / calls * 1e6, 1),
        "producer_wall_us_per_call": round(produce_s / calls * 1e6, 1),
        "flush_s": round(flush_s, 2), "flushed": flushed,
        "requests": server["requests"], **{r: server[r] for r in _ROUTES},
        "refused": server.get("refused_complete_mode_required", 0),
        "eager_starts": _stat(stats, "eager_starts"),
        "blocked_ms": _stat(stats, "blocked_ms"),
        "stored": stored[0], "stored_ended": stored[1],
    }


def _stat(stats: dict[str, Any], name: str) -> Any:
    """A counter wherever ``Engine.stats()`` keeps it (the sender's or the producers')."""
    for section in (stats, stats.get("sender", {}), stats.get("producers", {})):
        if isinstance(section, dict) and name in section:
            return section[name]
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--open", default="100,1000,10000",
                        help="calls open at once, comma separated (default %(default)s)")
    parser.add_argument("--calls", type=int, default=40_000)
    parser.add_argument("--store", default="count", choices=("count", "sqlite"))
    parser.add_argument("--server", default="serve",
                        choices=("serve", "weave-merged", "weave-complete", "weave-empty"),
                        help="engine serve, or bench.weave_routing with the project's calls "
                             "in weave's legacy table, in calls_complete, or none yet")
    parser.add_argument("--delay-ms", type=float, default=0,
                        help="weave-*: the server answers each ingest request this much "
                             "later, as across a network (default 0)")
    parser.add_argument("--rate", type=float, default=0,
                        help="calls the model answers per second (default: no limit)")
    parser.add_argument("--prompt-bytes", type=int, default=1000,
                        help="size of each call's prompt input (default %(default)s)")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="an Engine setting, read as its ENGINE_* variable would be, "
                             "e.g. eager_start_ms=5000, try_upsert_batch=true")
    args = parser.parse_args(argv)
    settings = {k: _parse_env(k, v) for k, v in (s.split("=", 1) for s in args.setting)}
    rows = []
    for open_calls in (int(n) for n in args.open.split(",")):
        row = run_one(args.store, args.calls, open_calls, settings, args.rate, args.prompt_bytes,
                      args.server, args.delay_ms)
        print(json.dumps(row), flush=True)
        rows.append(row)
    cols = ("open", "floor_s", "produce_s", "producer_cpu_us_per_call", "flush_s", "requests",
            *_ROUTES, "refused", "eager_starts", "blocked_ms", "stored_ended")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in cols) + " |")
    bad = [r for r in rows if (r["store"] == "sqlite" or r["server"] != "serve")
           and r["stored_ended"] != r["calls"]]
    return 1 if bad or not all(r["flushed"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
