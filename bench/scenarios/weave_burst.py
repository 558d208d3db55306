"""Burst worker: weave 0.54.0's batched client offered calls as fast as it takes them.

    python -m bench.scenarios.weave_burst --url URL --calls N --loop-s S --drain-s D

Feeds ``RemoteHTTPTraceServer(should_batch=True)`` the ``small`` profile for at most
``--calls`` calls or ``--loop-s`` seconds, then reads the processor's own drop counter
(its queue holds 100,000 calls and drops the rest without telling the caller), waits
``--drain-s`` and counts what reached the sink, and prints one JSON line. It never waits for
weave's full drain (minutes at its rate): it leaves with ``os._exit`` so weave's exit hook
does not block.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.peers import _run
from bench.peers.weave_client import _offline_env


def _count_after(count_url: str, window_s: float) -> int:
    """The sink's count after a fixed drain window: weave's full drain takes minutes here."""
    time.sleep(window_s)  # the measurement window itself, not a synchronisation wait
    return _run.read_count(count_url)


def _weave_batched(args: argparse.Namespace, payloads: list[_run.Payload],
                   report: _run.Report) -> tuple[Any, Callable[[int], None]]:
    """The same requests as ``bench.peers.weave_client``'s batched mode, server exposed."""
    import weave
    from weave.trace_server_bindings.remote_http_trace_server import RemoteHTTPTraceServer
    from weave.utils.ids import generate_id

    report.versions["weave"] = weave.__version__
    server = RemoteHTTPTraceServer(args.url, should_batch=True)
    server.set_auth(("api", os.environ["WANDB_API_KEY"]))
    op_name, project_id = _run.profile("small").op_name, args.project

    def trace_one(i: int) -> None:
        payload = payloads[i % len(payloads)]
        call_id, trace_id = generate_id(), generate_id()
        started_at = datetime.datetime.now(datetime.timezone.utc)
        server.call_start({"start": {
            "project_id": project_id, "id": call_id, "trace_id": trace_id,
            "op_name": op_name, "started_at": started_at,
            "attributes": payload.attributes, "inputs": payload.inputs,
        }})  # fmt: skip
        server.call_end({"end": {
            "project_id": project_id, "id": call_id, "trace_id": trace_id,
            "started_at": started_at, "ended_at": datetime.datetime.now(datetime.timezone.utc),
            "output": payload.output, "summary": payload.summary,
        }})  # fmt: skip

    return server, trace_one


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--loop-s", type=float, required=True)
    parser.add_argument("--drain-s", type=float, required=True)
    parser.add_argument("--project", default=_run.DEFAULT_PROJECT)
    args = parser.parse_args(argv)
    _offline_env(args.url)
    count_url = args.url + "/stats"
    payloads = _run.pregenerate("small", args.calls)
    report = _run.Report("weave-0.54", "batched", "small", args.calls)
    with contextlib.redirect_stdout(sys.stderr):
        server, trace_one = _weave_batched(args, payloads, report)
        _run.run_loop(report, args.calls, time.monotonic() + args.loop_s, trace_one)
        dropped = server.get_call_processor()._dropped_item_count
        stored = _count_after(count_url, args.drain_s)
        result = {
            "calls_offered": args.calls,
            "calls_attempted": report.calls_enqueued,
            "calls_not_attempted_in_time": args.calls - report.calls_enqueued,
            "dropped_by_client": dropped,
            "calls_at_sink_after_drain_window": stored,
            "loop_wall_s": report.loop_wall_s,
            "enqueue_calls_per_s": report.enqueue_calls_per_s,
            "loop_main_thread_cpu_us_per_call": report.loop_main_thread_cpu_us_per_call,
            "versions": report.versions,
        }
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
