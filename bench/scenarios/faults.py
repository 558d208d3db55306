"""faults: a 1 MiB body limit, a 429/5xx storm, an outage; delivered vs offered, bytes wasted.

The sink is ``tests.faultserver.FaultServer`` (in this process, on its own thread): it
records every request's wire bytes and answer, stores calls merged by id and counts
re-deliveries, so the same figures come out for every contender. The engine runs with
compression off here, as weave always does, so both upload comparable bytes.

- ``limit_413``: bodies over 1 MiB answered 413. Rejected vs accepted upload bytes.
- ``storm``: 20% 429 (``Retry-After: 0``), 5% 500, 5% 503 at random (seeded).
- ``outage``: the server stops listening for ``outage_s`` once the first request arrived.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from typing import Any

from bench import harness
from bench._run import Config
from tests.faultserver import FaultServer

LIMIT_BYTES = 1 << 20
_PROFILE = "eval"
_FIRST_REQUEST_TIMEOUT_S = 60.0
_CASES = {
    "limit_413": {"limit_bytes": LIMIT_BYTES},
    "storm": {"p_429": 0.2, "retry_after": "0", "p_500": 0.05, "p_503": 0.05},
    "outage": {},
}
_INGEST_SUFFIXES = ("/calls/complete", "/call/upsert_batch", "/call/start", "/call/end")


def _delivered(server: FaultServer) -> int:
    return sum(1 for cid in server.stored_ids(harness.PROJECT)
               if server.is_complete(harness.PROJECT, cid))


def _outage(server: FaultServer, outage_s: float) -> float | None:
    """Take the server down for ``outage_s`` once traffic started; the time it came back."""
    if not server.wait_for(lambda: bool(server.requests), _FIRST_REQUEST_TIMEOUT_S):
        return None
    server.down()
    time.sleep(outage_s)  # the fault's own duration
    server.up()
    return time.perf_counter()


def _after_first_success(records: list[Any]) -> list[Any]:
    """The requests after the first accepted one: "once the size target has adapted"."""
    for i, record in enumerate(records):
        if 200 <= record.status < 300:
            return records[i:]
    return []


def measure(case: str, contender: str, calls: int, cfg: Config) -> dict[str, Any]:
    with FaultServer(seed=7, **_CASES[case]) as server:
        argv = harness.driver_argv(contender, server.url, calls, _PROFILE, cfg.timeout_s)
        with tempfile.TemporaryDirectory(prefix="bench-faults-") as work_dir:
            began = time.perf_counter()
            proc = harness.start_driver(argv, work_dir)
            back_up_at = _outage(server, cfg.outage_s) if case == "outage" else None
            row = harness.finish_driver(proc, cfg.timeout_s)
            ended = time.perf_counter()
        ingest = [r for r in server.records() if r.path.endswith(_INGEST_SUFFIXES)]
        delivered, duplicates = _delivered(server), server.duplicate_deliveries()
    rejected = sum(r.wire_bytes for r in ingest if r.status == 413)
    accepted = sum(r.wire_bytes for r in ingest if 200 <= r.status < 300)
    adapted = _after_first_success(ingest)
    rejected_adapted = sum(r.wire_bytes for r in adapted if r.status == 413)
    enqueued = row.get("calls_enqueued") or 0
    return {
        "record": "run", "scenario": "faults", "case": case, "contender": contender,
        "mode": row.get("mode"), "profile": _PROFILE, "producers": 1, "compression": "none",
        "sink": "faultserver", "calls_enqueued": enqueued, "calls_delivered": delivered,
        "calls_lost": enqueued - delivered, "calls_duplicated": duplicates,
        "requests": len(ingest),
        "requests_by_status": dict(Counter(str(r.status) for r in ingest)),
        "rejected_upload_bytes": rejected, "accepted_upload_bytes": accepted,
        "rejected_pct_of_accepted": 100 * rejected / accepted if accepted else None,
        "rejected_pct_after_adapting": 100 * rejected_adapted / accepted if accepted else None,
        "engine_rejected_bytes_413": row.get("rejected_bytes_413"),
        "engine_bytes_acked": row.get("bytes_acked"),
        "flush_s": row.get("flush_s"), "run_s": ended - began,
        "drain_after_outage_s": ended - back_up_at if back_up_at else None,
        "timed_out": row.get("timed_out", False), "error": row.get("error"),
    }  # fmt: skip


def run(cfg: Config, repeat: int) -> list[dict[str, Any]]:
    contenders = [c for c in ("engine", "weave-batched") if c in cfg.contenders]
    return [measure(case, contender, cfg.fault_calls[contender], cfg)
            for _ in range(repeat) for case in _CASES for contender in contenders]
