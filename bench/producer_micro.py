"""CPU per call the producer's main thread pays, in process: the paths an eval loop takes.

    python -m bench.producer_micro [--calls 20000] [--repeat 3] [--profile eval]

One ``engine.Engine`` delivering to ``engine serve --store count`` (a subprocess); the
calls' data comes from 1,000 pre-built payloads of the bench profile. Four loops, each
timed with this thread's CPU time (``time.thread_time()``: other processes on the machine do not
inflate it; they can still slow it through shared caches, so compare builds run side by
side, alternating):

- ``struct``: ``tracer.call_start`` + ``call_end`` of pre-built wire Structs (the one-call
  C path; building the Structs is not timed);
- ``dicts_iso``: the same calls as pre-built dicts with ISO-8601 text times (``Z`` and
  ``+00:00``), the form users' code often has (building the dicts is not timed);
- ``tracer_call``: ``with tracer.call(op, inputs=...) as c: c.output = ...``;
- ``op``: a ``@tracer.op`` function of two arguments.

The engine is flushed between loops (not timed). Prints one JSON line per repeat and the
medians. A/B of two checkouts: run it alternately with ``PYTHONPATH`` set to each (both
with their C extension built in place).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import engine
from bench.payloads import profile
from engine.server import serve_subprocess
from engine.wire import EndedCallSchemaForInsert, StartedCallSchemaForInsert, utcnow, uuid7

PROJECT = "bench/producer-micro"
_PAYLOADS = 1000


def _cpu_s() -> float:
    # CLOCK_THREAD_CPUTIME_ID: nanoseconds; getrusage(RUSAGE_THREAD) ticks at 2.6-4 ms on
    # some kernels (this VM's), a few % of a 20,000-call loop
    return time.thread_time()


def _structs(parts: list[tuple], calls: int) -> list[tuple[Any, Any]]:
    items = []
    for i in range(calls):
        inputs, output, summary, attributes = parts[i % len(parts)]
        start = StartedCallSchemaForInsert(
            project_id=PROJECT, id=uuid7(), trace_id=uuid7(), op_name="op",
            started_at=utcnow(), attributes=attributes, inputs=inputs)
        items.append((start, EndedCallSchemaForInsert(
            project_id=PROJECT, id=start.id, trace_id=start.trace_id,
            started_at=start.started_at, ended_at=utcnow(), output=output, summary=summary)))
    return items


def struct_calls_us(tracer: Any, items: list[tuple[Any, Any]]) -> float:
    """This thread's CPU µs per ``call_start`` + ``call_end`` of pre-built items."""
    began = _cpu_s()
    for start, end in items:
        tracer.call_start(start)
        tracer.call_end(end)
    return (_cpu_s() - began) / len(items) * 1e6


def _dicts(parts: list[tuple], calls: int) -> list[tuple[dict, dict]]:
    """The calls as users' code often has them: dicts, times as ISO-8601 text."""
    items = []
    for i in range(calls):
        inputs, output, summary, attributes = parts[i % len(parts)]
        call_id, trace_id = uuid7(), uuid7()
        started_at = utcnow().isoformat().replace("+00:00", "Z")
        items.append((
            {"project_id": PROJECT, "id": call_id, "trace_id": trace_id, "op_name": "op",
             "started_at": started_at, "attributes": attributes, "inputs": inputs},
            {"project_id": PROJECT, "id": call_id, "trace_id": trace_id,
             "started_at": started_at, "ended_at": utcnow().isoformat(), "output": output,
             "summary": summary}))  # fmt: skip
    return items


def _one_repeat(eng: engine.Engine, parts: list[tuple], calls: int) -> dict[str, float]:
    tracer = eng.producer()
    per_call: dict[str, float] = {"struct_us": struct_calls_us(tracer, _structs(parts, calls))}
    eng.flush(timeout_s=120)
    per_call["dicts_iso_us"] = struct_calls_us(tracer, _dicts(parts, calls))
    eng.flush(timeout_s=120)
    began = _cpu_s()
    for i in range(calls):
        inputs, output, _, _ = parts[i % len(parts)]
        with tracer.call("op", inputs=inputs) as call:
            call.output = output
    per_call["tracer_call_us"] = (_cpu_s() - began) / calls * 1e6
    eng.flush(timeout_s=120)
    traced = tracer.op(name="op")(lambda question, context: context)
    began = _cpu_s()
    for i in range(calls):
        inputs, _, _, attributes = parts[i % len(parts)]
        traced(inputs, attributes)
    per_call["op_us"] = (_cpu_s() - began) / calls * 1e6
    eng.flush(timeout_s=120)
    return per_call


def payload_parts(profile_name: str, count: int) -> list[tuple]:
    """``count`` (inputs, output, summary, attributes) of a bench profile."""
    prof = profile(profile_name)
    return [(prof.inputs(i), prof.output(i), prof.summary(i), prof.attributes(i))
            for i in range(count)]  # fmt: skip


@contextlib.contextmanager
def engine_to_count_sink(project: str) -> Iterator[engine.Engine]:
    """An uncompressed Engine delivering to a fresh ``engine serve --store count``."""
    with tempfile.TemporaryDirectory() as tmp, serve_subprocess(
            Path(tmp) / "sink.db", store="count") as url, engine.Engine(
            url=url, project=project, compression="none") as eng:
        yield eng


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", default="eval")
    args = parser.parse_args()
    parts = payload_parts(args.profile, _PAYLOADS)
    runs = []
    with engine_to_count_sink(PROJECT) as eng:
        _one_repeat(eng, parts, 2000)  # warm-up: slot claimed, caches and allocator primed
        for _ in range(args.repeat):
            runs.append(_one_repeat(eng, parts, args.calls))
            print(json.dumps({k: round(v, 3) for k, v in runs[-1].items()}), flush=True)
    medians = {key: round(statistics.median(r[key] for r in runs), 3) for key in runs[0]}
    print(json.dumps({"median": medians, "engine": engine.__file__}), flush=True)


if __name__ == "__main__":
    main()
