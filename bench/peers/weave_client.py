"""Peer driver: weave 0.54.0's own client, timed on the same payloads as every contender.

    python -m bench.peers.weave_client --url URL --calls N --profile eval \
        --mode batched|batched-iso|op|op-engine

``batched``: weave's ``RemoteHTTPTraceServer(URL, should_batch=True)`` fed ``call_start`` /
``call_end`` requests built as weave builds them, then its call processor drained.
``op``: ``weave.init(project)`` against the server (run offline: the trace server and the
W&B GraphQL base both point at URL) and a ``@weave.op`` called N times, then the client's
own flush. ``batched-iso``: ``batched`` with the timestamps as ISO-8601 strings.
``op-engine``: the same ``@weave.op`` program with our binding installed first
(``engine.integrations.weave.install()``). Prints one JSON line (see ``bench.peers._run.Report``).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.peers import _run

_UTC = datetime.timezone.utc
# weave wants some API key to exist; the local sink ignores it. A real key is never needed.
_PLACEHOLDER_API_KEY = "bench-placeholder-api-key-0000000000000"


def _offline_env(url: str) -> None:
    """Point weave at the local server for both of the hosts it talks to, quietly."""
    os.environ["WF_TRACE_SERVER_URL"] = url
    os.environ["WANDB_BASE_URL"] = url
    os.environ.setdefault("WANDB_API_KEY", _PLACEHOLDER_API_KEY)
    os.environ.setdefault("WEAVE_PRINT_CALL_LINK", "false")
    # Its sentry hook would try to reach the internet from a benchmark.
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")


def _batched(
    args: Any, payloads: list[_run.Payload], iso: bool = False
) -> tuple[Callable[[int], None], Callable[[], None]]:
    from weave.trace_server_bindings.remote_http_trace_server import RemoteHTTPTraceServer
    from weave.utils.ids import generate_id

    server = RemoteHTTPTraceServer(args.url, should_batch=True)
    server.set_auth(("api", os.environ["WANDB_API_KEY"]))
    op_name, project_id = _run.profile(args.profile).op_name, args.project

    def now() -> Any:
        moment = datetime.datetime.now(_UTC)
        return moment.isoformat() if iso else moment

    def trace_one(i: int) -> None:
        payload = payloads[i % len(payloads)]
        call_id, trace_id = generate_id(), generate_id()
        started_at = now()
        server.call_start({"start": {
            "project_id": project_id, "id": call_id, "trace_id": trace_id,
            "op_name": op_name, "started_at": started_at,
            "attributes": payload.attributes, "inputs": payload.inputs,
        }})  # fmt: skip
        server.call_end({"end": {
            "project_id": project_id, "id": call_id, "trace_id": trace_id,
            "started_at": started_at, "ended_at": now(),
            "output": payload.output, "summary": payload.summary,
        }})  # fmt: skip

    def flush() -> None:
        # Drains the queue (and, on the complete path, pairs what is pending), then
        # joins the sender thread; weave's own WeaveClient.flush does the same.
        processor = server.get_call_processor()
        if processor is not None:
            processor.stop_accepting_new_work_and_flush_queue()

    return trace_one, flush


def _op(
    args: Any, payloads: list[_run.Payload]
) -> tuple[Callable[[int], None], Callable[[], None]]:
    import weave

    client = weave.init(args.project)

    # The op's recorded inputs must be exactly the profile's inputs, so its answer comes
    # from this one-slot holder instead of an extra argument.
    answer: list[Any] = [None]

    @weave.op(name=_run.profile(args.profile).op_name)
    def traced(**inputs: Any) -> Any:
        return answer[0]

    def trace_one(i: int) -> None:
        payload = payloads[i % len(payloads)]
        answer[0] = payload.output
        traced(**payload.inputs)

    def flush() -> None:
        client.finish(use_progress_bar=False)

    return trace_one, flush


def _op_through_engine(
    args: Any, payloads: list[_run.Payload]
) -> tuple[Callable[[int], None], Callable[[], None]]:
    """``@weave.op`` with our binding: ``engine.integrations.weave.install()`` before init."""
    import engine.integrations.weave

    engine.integrations.weave.install(project=args.project, compression="none")
    return _op(args, payloads)


def _batched_iso(
    args: Any, payloads: list[_run.Payload]
) -> tuple[Callable[[int], None], Callable[[], None]]:
    """``batched`` with ISO-8601 string timestamps (weave's pydantic models parse them)."""
    return _batched(args, payloads, iso=True)


_MODES = {"batched": _batched, "batched-iso": _batched_iso, "op": _op,
          "op-engine": _op_through_engine}


def _drive(args: Any, report: _run.Report, payloads: list[_run.Payload], deadline: float) -> None:
    import weave

    report.versions["weave"] = weave.__version__
    trace_one, flush = _MODES[args.mode](args, payloads)
    loop_start = _run.run_loop(report, args.calls, deadline, trace_one)
    _run.run_flush(report, loop_start, deadline, flush)


def main(argv: list[str] | None = None) -> int:
    args = _run.parse_args(__doc__.splitlines()[0], tuple(_MODES), argv)
    _offline_env(args.url)
    deadline = time.monotonic() + args.timeout_s
    report = _run.Report("weave-0.54", args.mode, args.profile, args.calls)
    payloads = _run.pregenerate(args.profile, args.calls)
    report.distinct_payloads = len(payloads)
    count_before = _run.read_count(args.count_url)
    # weave prints banners and progress to stdout; the JSON line must be alone there.
    with contextlib.redirect_stdout(sys.stderr):
        try:
            _drive(args, report, payloads, deadline)
        except Exception as e:  # the peer failing is a result to report, not a crash
            report.error = f"{type(e).__name__}: {e}"
    _run.finish(report, count_before, args.count_url)
    return 1 if report.error else 0


if __name__ == "__main__":
    sys.exit(main())
