"""Peer driver: the naive client, one synchronous POST per traced call.

    python -m bench.peers.naive --url URL --calls N --profile eval --mode complete|startend

``complete`` posts each call as a one-item ``/v2/{entity}/{project}/calls/complete``;
``startend`` posts ``/call/start`` then ``/call/end``. One keep-alive connection
(``http.client``), compact JSON from the standard library, no batching, no threads: what a
hand-written tracer does. Prints the same JSON line as the other drivers.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import json
import os
import sys
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from bench.peers import _run
from engine.wire._codec import uuid7

_UTC = datetime.timezone.utc
_PLACEHOLDER_API_KEY = "bench-placeholder-api-key-0000000000000"


class _Poster:
    """POSTs JSON over one keep-alive connection; reconnects once if the server closed it."""

    def __init__(self, url: str, api_key: str, timeout_s: float) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"--url must be http://host:port for the naive client, got {url!r}")
        self._host, self._port, self._base = (
            parts.hostname,
            parts.port or 80,
            parts.path.rstrip("/"),
        )
        self._timeout_s = timeout_s
        token = base64.b64encode(f"api:{api_key}".encode()).decode()
        self._headers = {"Content-Type": "application/json", "Authorization": f"Basic {token}"}
        self._conn = self._connect()

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout_s)

    def post(self, path: str, body: dict[str, Any]) -> None:
        data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        try:
            self._send(path, data)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self._conn.close()
            self._conn = self._connect()
            self._send(path, data)

    def _send(self, path: str, data: bytes) -> None:
        self._conn.request("POST", self._base + path, body=data, headers=self._headers)
        reply = self._conn.getresponse()
        reply.read()
        if reply.status >= 300:
            raise RuntimeError(f"POST {path} answered {reply.status} {reply.reason}")


def _now() -> str:
    return datetime.datetime.now(_UTC).isoformat().replace("+00:00", "Z")


def _tracer(args: Any, payloads: list[_run.Payload]) -> Callable[[int], None]:
    poster = _Poster(
        args.url, os.environ.get("WANDB_API_KEY", _PLACEHOLDER_API_KEY), args.timeout_s
    )
    profile, project_id = _run.profile(args.profile), args.project
    complete_path = f"/v2/{project_id}/calls/complete"

    def trace_complete(i: int) -> None:
        payload, started_at = payloads[i % len(payloads)], _now()
        call = {
            "project_id": project_id, "id": uuid7(), "trace_id": uuid7(),
            "op_name": profile.op_name, "started_at": started_at, "ended_at": _now(),
            "attributes": payload.attributes, "inputs": payload.inputs,
            "output": payload.output, "summary": payload.summary,
        }  # fmt: skip
        poster.post(complete_path, {"batch": [call]})

    def trace_start_end(i: int) -> None:
        payload, call_id, trace_id = payloads[i % len(payloads)], uuid7(), uuid7()
        poster.post("/call/start", {"start": {
            "project_id": project_id, "id": call_id, "trace_id": trace_id,
            "op_name": profile.op_name, "started_at": _now(),
            "attributes": payload.attributes, "inputs": payload.inputs,
        }})  # fmt: skip
        poster.post("/call/end", {"end": {
            "project_id": project_id, "id": call_id, "ended_at": _now(),
            "output": payload.output, "summary": payload.summary,
        }})  # fmt: skip

    return trace_complete if args.mode == "complete" else trace_start_end


def main(argv: list[str] | None = None) -> int:
    args = _run.parse_args(__doc__.splitlines()[0], ("complete", "startend"), argv)
    deadline = time.monotonic() + args.timeout_s
    report = _run.Report("naive", args.mode, args.profile, args.calls)
    payloads = _run.pregenerate(args.profile, args.calls)
    report.distinct_payloads = len(payloads)
    count_before = _run.read_count(args.count_url)
    try:
        trace_one = _tracer(args, payloads)
        loop_start = _run.run_loop(report, args.calls, deadline, trace_one)
        # Every call was acknowledged inside the loop: there is nothing left to flush.
        _run.run_flush(report, loop_start, deadline, lambda: None)
    except (OSError, RuntimeError, http.client.HTTPException) as e:
        report.error = f"{type(e).__name__}: {e}"
    _run.finish(report, count_before, args.count_url)
    return 1 if report.error else 0


if __name__ == "__main__":
    sys.exit(main())
