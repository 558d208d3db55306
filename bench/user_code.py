"""Values tracing cannot encode, at scale: calls produced, delivered, sanitised, lost.

    python -m bench.user_code                  # 1,000 calls per value kind and wrapper
    python -m bench.user_code --calls 200

For every kind of value the encoder cannot take as it is (a dict that contains itself, a
string with a lone surrogate, an object with no JSON form, an item over max_request_bytes,
NaN, bytes, a NaN Decimal in a dict with int keys, a naive timestamp) it traces ``--calls`` calls through ``@tracer.op`` (the
value as an argument) and as many through ``tracer.call`` (the value as the output), against
``engine serve`` (SQLite) on loopback, and counts at the server: calls stored with both
start and end (delivered), starts without an end (orphans), calls missing (lost), beside
the engine's ``sanitised_<reason>`` counter and how many calls the user's code got its own
value back from. Then the same values through ``call_start``/``call_end``: every one must
raise ``EncodeError`` and enqueue nothing. Prints a markdown table and one JSON line per
kind; exits 1 if anything was lost, orphaned, or not returned.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

import engine
from engine.server import serve_subprocess
from engine.wire import EndedCallSchemaForInsert, StartedCallSchemaForInsert, utcnow, uuid7

PROJECT = "bench/user-code"
MAX_REQUEST_BYTES = 256 << 10


class _NoText:
    def __str__(self) -> str:
        raise ValueError("no text")


def _cycle() -> dict:
    value: dict[str, Any] = {"a": 1}
    value["self"] = value
    return value


# kind -> (make the value, the counter it is counted under, raised by call_start/call_end)
KINDS: dict[str, tuple[Callable[[], Any], str, bool]] = {
    "cycle": (_cycle, "sanitised_cycle", True),
    "lone surrogate": (lambda: "a \ud800 b", "sanitised_bad_string", True),
    "no JSON form, str() fails": (_NoText, "sanitised_unencodable", False),
    "over max_request_bytes": (lambda: "x" * MAX_REQUEST_BYTES, "sanitised_oversized", True),
    "NaN": (lambda: math.nan, "sanitised_nonfinite", False),
    "bytes": (lambda: b"\x00\xff" * 8, "sanitised_bytes", False),
    # msgspec writes a dict with keys other than str itself, and refuses a NaN Decimal (0.23)
    "NaN Decimal in a dict with int keys": (lambda: {0: Decimal("NaN")}, "sanitised_nonfinite",
                                            True),
}


def _stored(url: str) -> dict[str, list[dict]]:
    body = msgspec.json.encode({"project_id": PROJECT})
    request = urllib.request.Request(url + "/calls/stream_query", data=body, method="POST")
    by_op: dict[str, list[dict]] = {}
    with urllib.request.urlopen(request, timeout=120) as resp:
        for line in resp.read().splitlines():
            call = msgspec.json.decode(line)
            by_op.setdefault(call["op_name"], []).append(call)
    return by_op


def _wrappers(tracer: Any, kind: str, make: Callable[[], Any], calls: int) -> int:
    """``calls`` op calls with the value as argument and as many tracer.call blocks with it
    as output; returns how many gave the user's own value back."""
    same = 0
    traced = tracer.op(name=f"op {kind}")(lambda value: value)
    for _ in range(calls):
        value = make()
        same += traced(value) is value
    for _ in range(calls):
        value = make()
        with tracer.call(f"call {kind}") as call:
            call.output = value
        same += call.output is value
    return same


def _direct(tracer: Any, make: Callable[[], Any], calls: int) -> int:
    """call_start of the value as an input: how many raised EncodeError."""
    raised = 0
    for _ in range(calls):
        start = StartedCallSchemaForInsert(
            project_id=PROJECT, id=uuid7(), trace_id=uuid7(), op_name="direct",
            started_at=utcnow(), attributes={}, inputs={"v": make()})
        try:
            tracer.call_start(start)
            tracer.call_end(EndedCallSchemaForInsert(
                project_id=PROJECT, id=start.id, trace_id=start.trace_id,
                started_at=start.started_at, ended_at=utcnow(), summary={}))
        except engine.EncodeError:
            raised += 1
    return raised


def _naive_times(tracer: Any, calls: int) -> int:
    raised = 0
    for _ in range(calls):
        start = StartedCallSchemaForInsert(
            project_id=PROJECT, id=uuid7(), trace_id=uuid7(), op_name="direct",
            started_at=dt.datetime(2026, 1, 1), attributes={}, inputs={})
        try:
            tracer.call_start(start)
        except engine.EncodeError:
            raised += 1
    return raised


def run(calls: int, root: Path) -> list[dict[str, Any]]:
    rows = []
    with serve_subprocess(root / "traces.db") as url, engine.Engine(
            url=url, project=PROJECT, max_request_bytes=MAX_REQUEST_BYTES, linger_ms=5,
            dead_letter_path=str(root / "dead.jsonl")) as eng:
        tracer = eng.producer()
        for kind, (make, counter, direct_raises) in KINDS.items():
            before = eng.stats()["producers"][counter]
            same = _wrappers(tracer, kind, make, calls)
            written = eng.stats()["ring"]["records_written"]
            raised = _direct(tracer, make, calls) if direct_raises else None
            rows.append({"kind": kind, "produced": 2 * calls, "returned_own_value": same,
                         "sanitised": eng.stats()["producers"][counter] - before,
                         "direct_raised": raised,
                         "direct_records_written": eng.stats()["ring"]["records_written"]
                         - written if direct_raises else None})
        written = eng.stats()["ring"]["records_written"]
        naive_raised = _naive_times(tracer, calls)
        naive_written = eng.stats()["ring"]["records_written"] - written
        assert eng.flush(timeout_s=300)
        dead = eng.stats()["dead_letters"]
        stored = _stored(url)
    for row in rows:
        calls_seen = stored.get(f"op {row['kind']}", []) + stored.get(f"call {row['kind']}", [])
        row["delivered"] = sum(1 for c in calls_seen if c["ended_at"])
        row["orphans"] = sum(1 for c in calls_seen if not c["ended_at"])
        row["lost"] = row["produced"] - row["delivered"] - row["orphans"]
        row["dead_letters"] = dead
    rows.append({"kind": "naive started_at (direct API)", "produced": calls,
                 "direct_raised": naive_raised, "direct_records_written": naive_written,
                 "delivered": len([c for c in stored.get("direct", [])]), "lost": 0})
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["| value | produced | delivered | sanitised (counted) | user's value returned "
             "| orphan starts | lost | direct API: raised EncodeError / records written |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        direct = ("–" if r.get("direct_raised") is None
                  else f"{r['direct_raised']:,} / {r['direct_records_written']}")
        lines.append(f"| {r['kind']} | {r['produced']:,} | {r.get('delivered', 0):,} | "
                     f"{r.get('sanitised', '–')} | {r.get('returned_own_value', '–')} | "
                     f"{r.get('orphans', 0)} | {r['lost']} | {direct} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls per kind and wrapper")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as root:
        rows = run(args.calls, Path(root))
    print(_table(rows))
    for row in rows:
        print(json.dumps(row))
    bad = [r for r in rows if r["lost"] or r.get("orphans")
           or r.get("returned_own_value", r["produced"]) != r["produced"]
           or r.get("direct_records_written")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
