"""``engine calls``: list the latest calls of a project, or follow them like ``tail -f``.

Reads ``POST /calls/stream_query`` of any trace server (``engine serve``, hosted Weave, a
relay). Following polls the newest calls every ``--interval-s`` and prints each call once
when it is first seen and again when a running call ends. A poll whose newest
``_FOLLOW_WINDOW`` calls are all new reads the next ones too (those that started no later
than the oldest read), until it meets a call it has seen (up to ``_FOLLOW_MAX_CALLS`` a
poll; past that it says how many it left out), each window twice the one before (up to
``_FOLLOW_WINDOW_MAX``): a burst larger than a window between two polls is printed whole,
however fast calls keep arriving meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import OrderedDict
from datetime import datetime
from typing import Any

from engine.cli import _args, _probe
from engine.cli._args import CommandFailed
from engine.common import _env
from engine.common._config import api_key_source, load_config
from engine.common._redact import redact_url

STATUSES = ("success", "error", "running")
_SEEN_MAX = 100_000  # ids remembered while following (the oldest are forgotten first)
_FOLLOW_WINDOW = 500  # newest calls read per request while following
_FOLLOW_WINDOW_MAX = 5_000  # a poll's windows double up to this (fewer, cheaper requests)
_FOLLOW_MAX_CALLS = 20_000  # calls one poll reads at most (a burst past it is said)


def add(subparsers: argparse._SubParsersAction) -> None:
    calls = _args.add_command(
        subparsers, "calls", "list or follow the calls of a project",
        "List the latest calls of a project (oldest first, like tail), or follow new ones.")
    calls.add_argument("--project", type=_args.project, required=True,
                       help="entity/project to read")
    calls.add_argument("--url", type=_args.url, default=None,
                       help="trace server URL (default: the url setting, else the local serve)")
    calls.add_argument("--op", default=None, help="only calls whose op name contains this text")
    calls.add_argument("--status", choices=STATUSES, default=None, help="only calls in this state")
    calls.add_argument("--limit", type=_args.positive_int, default=20,
                       help="how many of the latest calls to list (default 20)")
    calls.add_argument("--follow", "-f", action="store_true",
                       help="keep printing new calls until interrupted")
    calls.add_argument("--interval-s", type=_args.positive_float, default=1.0,
                       help="poll period while following (default 1.0)")
    calls.add_argument("--json", action="store_true", help="one JSON call per line")
    calls.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(**({"url": args.url} if args.url else {}))
    reader = CallReader(cfg.url, args.project, cfg.api_key or os.environ.get(_env.API_KEY))
    _probe.server_info(cfg.url, reader.api_key, key_from=api_key_source())
    query = build_query(args.op, args.status)
    window = max(args.limit, _FOLLOW_WINDOW) if args.follow else args.limit
    newest = reader.newest(window, query)
    seen: OrderedDict[str, str] = OrderedDict((c["id"], status_of(c)) for c in newest[args.limit:])
    try:  # following, Ctrl-C is how it ends, from the first line printed on
        _emit(reversed(newest[:args.limit]), seen, args.json)
        if not newest:  # said on stderr: the output stays the calls alone
            print(f"engine calls: no calls in {args.project}" + (" match" if query else "")
                  + (" yet; following" if args.follow else ""), file=sys.stderr, flush=True)
        while args.follow:
            time.sleep(args.interval_s)  # the poll period
            _follow_once(reader, query, seen, args.json)
    except KeyboardInterrupt:
        if not args.follow:
            raise  # a listing cut short: "interrupted"
        return 0
    return 0


class ServerFailed(CommandFailed):
    """The server (or a proxy in front of it) answered 5xx: a restart, an upgrade."""


def _follow_once(reader: CallReader, query: dict[str, Any] | None,
                 seen: OrderedDict[str, str], as_json: bool) -> None:
    """One poll; a server that stops answering (restarted, upgraded: no answer, or a 5xx
    from a proxy in front of it or from the server as it stops) is said once and polled
    again until it is back, instead of ending the follow."""
    try:
        calls = _new_since_last_poll(reader, query, seen)
    except (_probe.Unreachable, ServerFailed) as exc:
        if not reader.lost:
            print(f"engine calls: {exc}; polling until it answers again", file=sys.stderr,
                  flush=True)
        reader.lost = True
        return
    if reader.lost:
        print("engine calls: the server answers again", file=sys.stderr, flush=True)
        reader.lost = False
    _emit(reversed(calls), seen, as_json)


def _new_since_last_poll(reader: CallReader, query: dict[str, Any] | None,
                         seen: OrderedDict[str, str]) -> list[dict[str, Any]]:
    """The newest calls, window after window back while every call of a full window is
    new (more calls arrived since the last poll than a window holds): newest first, each
    once.

    A window after the first reads the calls that started no later than the oldest call
    read so far, past those read that started at that very time (ties), not the next
    offset: a call stored meanwhile started later (or is simply among the older calls
    still to read), so it moves no window. By offset, each one pushed the next window one
    call later, and calls arriving faster than windows were read (a ClickHouse store
    answering a window in ~1 s while a team writes 1,500 calls/s into the project) kept
    every window new: a poll paged up to its cap and printed nothing meanwhile.

    Each window holds twice the calls of the one before, up to ``_FOLLOW_WINDOW_MAX``: a
    request costs a fixed ~100-150 ms beside ~110 us per 4 KB call (``engine serve`` over
    ClickHouse, idle), so windows of 500 read ~2,000 calls/s at best, and under a team's
    load (~0.7 s a window) fewer than the 1,500 calls/s one writer stored."""
    calls: list[dict[str, Any]] = []
    read: set[str] = set()
    older: dict[str, Any] | None = None
    offset = 0
    size = _FOLLOW_WINDOW
    while True:
        window = reader.newest(size, _and(query, older), offset=offset)
        calls += [c for c in window if c["id"] not in read]
        read.update(c["id"] for c in window)
        if len(window) < size or any(c["id"] in seen for c in window):
            return calls
        if len(calls) >= _FOLLOW_MAX_CALLS:
            print(f"engine calls: over {_FOLLOW_MAX_CALLS:,} calls since the last poll; "
                  f"printing the newest {_FOLLOW_MAX_CALLS:,}", file=sys.stderr, flush=True)
            return calls
        oldest = window[-1].get("started_at")
        if oldest is None:  # calls known only by their end sort last: every started call was read
            return calls
        older = {"$not": [{"$gt": [{"$getField": "started_at"}, {"$literal": oldest}]}]}
        offset = sum(1 for c in calls if c.get("started_at") == oldest)
        size = min(2 * size, _FOLLOW_WINDOW_MAX)


def _and(query: dict[str, Any] | None, older: dict[str, Any] | None) -> dict[str, Any] | None:
    """``query`` (an ``$expr`` query or None) and the ``older`` condition."""
    if older is None or query is None:
        return query if older is None else {"$expr": older}
    return {"$expr": {"$and": [query["$expr"], older]}}


class CallReader:
    def __init__(self, url: str, project_id: str, api_key: str | None) -> None:
        self.url, self.project_id, self.api_key = url, project_id, api_key
        self.lost = False  # while following: the last poll got no answer

    def newest(self, limit: int, query: dict[str, Any] | None,
               offset: int = 0) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"project_id": self.project_id, "limit": limit,
                                "sort_by": [{"field": "started_at", "direction": "desc"}]}
        if offset:
            body["offset"] = offset
        if query:
            body["query"] = query
        answer = _probe.post_json(f"{self.url}/calls/stream_query", body, self.api_key)
        if answer.status != 200:
            failed = ServerFailed if answer.status >= 500 else CommandFailed  # 5xx: waited out
            raise failed(f"calls: {redact_url(self.url)}/calls/stream_query answered HTTP "
                         f"{answer.status}: {answer.body[:200].decode('utf-8', 'replace')}")
        return [json.loads(line) for line in answer.body.splitlines() if line.strip()]


def build_query(op: str | None, status: str | None) -> dict[str, Any] | None:
    """The ``$expr`` for ``--op`` (substring of the op name) and ``--status``."""
    terms: list[dict[str, Any]] = []
    if op:
        terms.append({"$contains": {"input": {"$getField": "op_name"},
                                    "substr": {"$literal": op}, "case_insensitive": True}})
    if status:  # the field weave's UI filters on, derived by the server for every call
        terms.append({"$eq": [{"$getField": "summary.weave.status"}, {"$literal": status}]})
    if not terms:
        return None
    return {"$expr": terms[0] if len(terms) == 1 else {"$and": terms}}


def _emit(calls: Any, seen: OrderedDict[str, str], as_json: bool) -> None:
    for call in calls:
        status = status_of(call)
        if seen.get(call["id"]) == status:
            continue
        seen[call["id"]] = status
        seen.move_to_end(call["id"])
        if len(seen) > _SEEN_MAX:
            seen.popitem(last=False)
        print(json.dumps(call) if as_json else format_line(call), flush=True)


def status_of(call: dict[str, Any]) -> str:
    if call.get("exception"):
        return "error"
    return "success" if call.get("ended_at") else "running"


def latency_s(call: dict[str, Any]) -> float | None:
    if not call.get("ended_at") or not call.get("started_at"):
        return None
    return (_time(call["ended_at"]) - _time(call["started_at"])).total_seconds()


def tokens_of(call: dict[str, Any]) -> int | None:
    usage = (call.get("summary") or {}).get("usage")
    if not isinstance(usage, dict):
        return None
    totals = [u.get("total_tokens") or (u.get("prompt_tokens") or u.get("input_tokens") or 0)
              + (u.get("completion_tokens") or u.get("output_tokens") or 0)
              for u in usage.values() if isinstance(u, dict)]
    return sum(totals) if totals else None


def format_line(call: dict[str, Any]) -> str:
    latency = latency_s(call)
    tokens = tokens_of(call)
    started = _time(call["started_at"]).astimezone().strftime("%H:%M:%S.%f")[:-3]
    return "  ".join([
        started, f"{status_of(call):<7}",
        f"{latency * 1000:>9.1f} ms" if latency is not None else f"{'…':>12}",
        f"{tokens:>6} tok" if tokens is not None else " " * 10,
        op_label(call.get("op_name") or "?"), call["id"],
    ])  # fmt: skip


def op_label(op_name: str) -> str:
    """``weave:///e/p/op/name:digest`` -> ``name``; plain names as they are."""
    if op_name.startswith("weave:"):
        op_name = op_name.rsplit("/", 1)[-1].split(":", 1)[0]
    return op_name


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
