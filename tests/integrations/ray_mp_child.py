"""What a Ray task of ``tests/integrations/test_ray.py`` hands its tracer to: a
``multiprocessing`` child (a Process or a Pool's worker, forked or spawned), as an eval
pipeline fanning out to a local pool inside a task does. A module of its own, importable
by a spawned child (the task puts the checkout on ``sys.path`` first) without pytest."""

from __future__ import annotations

import multiprocessing
import os
import traceback
from typing import Any

HOW = ("fork", "spawn", "fork-pool")  # a forked Process is given the tracer unpickled


def trace_two_calls(tracer: Any, label: str) -> str:
    """A call (``label`` its input) with one inside it; "ok", or the traceback of what
    raised."""
    try:
        with tracer.call("child", inputs={"label": label}) as call:
            with tracer.call("child.inner") as inner:
                inner.output = 1
            call.output = os.getpid()
    except BaseException:  # noqa: BLE001 - whatever raised is the test's answer
        return traceback.format_exc()
    return "ok"


def _process_main(tracer: Any, label: str, conn: Any) -> None:
    conn.send(trace_two_calls(tracer, label))
    conn.close()


def in_child(tracer: Any, how: str, label: str) -> str:
    """``trace_two_calls`` in a child process started ``how`` (one of ``HOW``)."""
    method, _, pool = how.partition("-")
    context = multiprocessing.get_context(method)
    if pool:
        with context.Pool(1) as workers:
            return workers.apply(trace_two_calls, (tracer, label))
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_process_main, args=(tracer, label, send))
    child.start()
    send.close()
    try:
        answer = receive.recv()
    except EOFError:  # it died before answering
        answer = None
    child.join()
    return answer or f"the child died with exit code {child.exitcode}"
