"""Calls/s delivered from N Ray workers, engine vs weave 0.54.0's client, on this machine.

    python -m bench.ray_e2e                        # 2 workers x 20,000 eval calls, 3 repeats
    python -m bench.ray_e2e --workers 2 --calls 20000 --repeat 3 --profile eval

A Ray cluster of ``ray.cluster_utils.Cluster`` on 127.0.0.1: a head node without CPUs (the
driver's) and one node of 1 CPU per worker, so each worker runs on a node of its own and,
for the engine, writes into that node's engine. Every contender traces the same payloads
(``bench.payloads``) into a fresh ``engine serve --store count``:

- ``engine``: ``RayEngine`` on the driver; each task ``tracer.call_start`` /
  ``call_end`` with the wire Structs (as ``bench.contenders.engine_driver``); the clock
  stops when the driver's ``eng.flush()`` (every node engine) returns True.
- ``engine-call``: the same with ``with tracer.call(...)`` (a TaskCall: ids a retry repeats).
- ``weave-batched``: in each task weave's ``RemoteHTTPTraceServer(should_batch=True)``
  fed ``call_start`` / ``call_end`` as weave builds them (``bench.peers.weave_client``),
  then its call processor drained; the clock stops when the last task's drain returns.

calls/s = calls stored (counted at the sink) / (last delivery - first task's loop start);
workers are started and warmed before the clock. Contenders alternate within each repeat;
the table gives medians with min-max. The machine is shared: expect noise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray on loopback only

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from bench.peers import _run  # noqa: E402
from engine.server import serve_subprocess  # noqa: E402

PROJECT = "bench-entity/bench-project"
CONTENDERS = ("engine", "engine-call", "weave-batched")
_UTC = datetime.timezone.utc


@contextmanager
def local_cluster(workers: int):
    """Head (the driver's node, no CPU) + ``workers`` nodes of 1 CPU, resources w0, w1..."""
    import ray._private.ray_constants as ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    args = dict(object_store_memory=100 << 20, node_ip_address="127.0.0.1")
    temp_dir = tempfile.mkdtemp(prefix="ray-bench-")
    # Ray writes the address file to $RAY_TMPDIR/ray/ without creating the folder
    os.environ["RAY_TMPDIR"] = temp_dir
    os.makedirs(os.path.join(temp_dir, "ray"), mode=0o700, exist_ok=True)
    nodes = Cluster(initialize_head=True, head_node_args=dict(
        args, num_cpus=0, include_dashboard=False, temp_dir=temp_dir))
    for i in range(workers):
        nodes.add_node(**args, num_cpus=1, resources={f"w{i}": 1})
    ray.init(address=nodes.address, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        nodes.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)  # Ray's sockets and logs


def _clock() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.time(), usage.ru_utime + usage.ru_stime


def _engine_loop(tracer: Any, payloads: list, calls: int, profile: str) -> None:
    from engine.wire import EndedCallSchemaForInsert, StartedCallSchemaForInsert, utcnow, uuid7

    op_name = _run.profile(profile).op_name
    for i in range(calls):
        p = payloads[i % len(payloads)]
        call_id, trace_id, started_at = uuid7(), uuid7(), utcnow()
        tracer.call_start(StartedCallSchemaForInsert(
            project_id=PROJECT, id=call_id, trace_id=trace_id, op_name=op_name,
            started_at=started_at, attributes=p.attributes, inputs=p.inputs))
        tracer.call_end(EndedCallSchemaForInsert(
            project_id=PROJECT, id=call_id, trace_id=trace_id, started_at=started_at,
            ended_at=utcnow(), output=p.output, summary=p.summary))


def _engine_call_loop(tracer: Any, payloads: list, calls: int, profile: str) -> None:
    op_name = _run.profile(profile).op_name
    for i in range(calls):
        p = payloads[i % len(payloads)]
        with tracer.call(op_name, p.inputs, attributes=p.attributes) as call:
            call.output, call.summary = p.output, p.summary


def _weave_client(url: str) -> Any:
    """weave's batched client, made before the clock."""
    from bench.peers.weave_client import _offline_env

    _offline_env(url)
    from weave.trace_server_bindings.remote_http_trace_server import RemoteHTTPTraceServer

    server = RemoteHTTPTraceServer(url, should_batch=True)
    server.set_auth(("api", os.environ["WANDB_API_KEY"]))
    return server


def _weave_loop(server: Any, payloads: list, calls: int, profile: str) -> None:
    """As bench.peers.weave_client's batched mode, then its call processor drained."""
    from weave.utils.ids import generate_id

    op_name = _run.profile(profile).op_name
    for i in range(calls):
        p = payloads[i % len(payloads)]
        call_id, trace_id = generate_id(), generate_id()
        started_at = datetime.datetime.now(_UTC)
        server.call_start({"start": {
            "project_id": PROJECT, "id": call_id, "trace_id": trace_id, "op_name": op_name,
            "started_at": started_at, "attributes": p.attributes, "inputs": p.inputs}})
        server.call_end({"end": {
            "project_id": PROJECT, "id": call_id, "trace_id": trace_id,
            "started_at": started_at, "ended_at": datetime.datetime.now(_UTC),
            "output": p.output, "summary": p.summary}})


@ray.remote(num_cpus=1)
def worker_task(contender: str, tracer_or_url: Any, calls: int, profile: str) -> dict:
    """Times one worker's loop; for weave, its drain too (the engine's is the driver's flush)."""
    payloads = _run.pregenerate(profile, calls)
    weave_server = _weave_client(tracer_or_url) if contender == "weave-batched" else None
    start = _clock()
    if weave_server is not None:
        _weave_loop(weave_server, payloads, calls, profile)
        loop_end = _clock()
        weave_server.get_call_processor().stop_accepting_new_work_and_flush_queue()
        delivered = time.time()
    else:
        loop = _engine_loop if contender == "engine" else _engine_call_loop
        loop(tracer_or_url, payloads, calls, profile)
        loop_end, delivered = _clock(), None
    return {"loop_start": start[0], "loop_s": loop_end[0] - start[0],
            "cpu_us_per_call": (loop_end[1] - start[1]) / calls * 1e6, "delivered": delivered}


@ray.remote(num_cpus=1)
def warm_engine(tracer: Any) -> None:
    """Attach to the node's engine and deliver one call: its sender is up before the clock."""
    with tracer.call("warm-up"):
        pass


@ray.remote(num_cpus=1)
def warm_up() -> int:
    import weave  # noqa: F401

    import engine.integrations.ray  # noqa: F401  (imports paid before the clock)

    return os.getpid()


def _count(url: str) -> int:
    with urllib.request.urlopen(url + "/stats", timeout=10) as reply:
        body = json.load(reply)
    return int(body["calls_complete"]) + int(body["calls_ended"])


def run_once(contender: str, workers: int, calls: int, profile: str) -> dict:
    with serve_subprocess(store="count") as url:
        eng = None
        target: Any = url
        if contender != "weave-batched":
            import engine.integrations.ray as engine_ray

            eng = engine_ray.RayEngine(url=url, project=PROJECT)
            target = eng.producer()
            ray.get([warm_engine.options(**_on(i)).remote(target) for i in range(workers)])
            assert eng.flush(timeout_s=120), "warm-up flush timed out"
        before = _count(url)
        try:
            results = ray.get([worker_task.options(**_on(i)).remote(
                contender, target, calls, profile) for i in range(workers)])
            if eng is not None:
                assert eng.flush(timeout_s=600), "flush timed out"
                delivered = time.time()
            else:
                delivered = max(r["delivered"] for r in results)
            stored = _count(url) - before
        finally:
            if eng is not None:
                eng.close()
    began = min(r["loop_start"] for r in results)
    return {"contender": contender, "workers": workers, "calls_offered": calls * workers,
            "calls_stored": stored, "profile": profile,
            "calls_per_s": stored / (delivered - began),
            "worker_cpu_us_per_call": statistics.median(r["cpu_us_per_call"] for r in results),
            "loop_s": max(r["loop_s"] for r in results)}


def _on(worker: int) -> dict:
    return {"resources": {f"w{worker}": 1}}


def _table(rows: list[dict]) -> str:
    lines = ["| contender | calls/s delivered (median, min-max) | worker CPU µs/call | "
             "stored / offered |", "|---|---:|---:|---:|"]
    for contender in dict.fromkeys(r["contender"] for r in rows):
        mine = [r for r in rows if r["contender"] == contender]
        rates = [r["calls_per_s"] for r in mine]
        cpu = statistics.median(r["worker_cpu_us_per_call"] for r in mine)
        stored = min(r["calls_stored"] for r in mine)
        lines.append(f"| {contender} | {statistics.median(rates):,.0f} ({min(rates):,.0f}-"
                     f"{max(rates):,.0f}) | {cpu:,.1f} | {stored:,} / {mine[0]['calls_offered']:,} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="Ray nodes, one worker each")
    parser.add_argument("--calls", type=int, default=20_000, help="calls per worker")
    parser.add_argument("--profile", default="eval", choices=_run.PROFILE_NAMES)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--out", help="append the JSON lines to this file")
    args = parser.parse_args(argv)
    contenders = args.contenders.split(",")
    rows = []
    with local_cluster(args.workers):
        ray.get([warm_up.options(**_on(i)).remote() for i in range(args.workers)])
        for _ in range(args.repeat):
            for contender in contenders:
                row = run_once(contender, args.workers, args.calls, args.profile)
                row["python"] = platform.python_version()
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.out:
                    with open(args.out, "a") as out:
                        out.write(json.dumps(row) + "\n")
    print(_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
