"""burst: calls offered as fast as possible (1M full, far fewer quick); lost per contender.

The engine: two forked producers, ``small`` profile, default ``on_full="block"`` (a full
ring makes producers wait, it never drops). weave 0.54.0's batched client: one process
offering the same calls for at most ``burst_weave_loop_s``; its own drop counter (queue
bound 100,000) is the certain loss, and the sink's count after a short drain window shows
how little arrived meanwhile. The naive client cannot drop (it blocks on every POST), so
it is not run here.
"""

from __future__ import annotations

import sys
from typing import Any

from bench import harness
from bench._run import Config

_PRODUCERS = 2


def _engine(cfg: Config) -> dict[str, Any]:
    with harness.sink("count") as s:
        argv = harness.driver_argv("engine", s.url, cfg.burst_calls, "small", cfg.timeout_s,
                                   producers=_PRODUCERS)
        (row,), _wall_s = harness.run_drivers([argv], cfg.timeout_s)
        received = s.calls_received()
    enqueued = row.get("calls_enqueued") or 0
    return {
        "contender": "engine", "mode": row.get("mode"), "producers": _PRODUCERS,
        "calls_offered": cfg.burst_calls, "calls_attempted": enqueued,
        "calls_not_attempted_in_time": cfg.burst_calls - enqueued,
        "dropped_by_client": row.get("dropped_full", 0), "calls_at_sink": received,
        "calls_lost": enqueued - received, "enqueue_calls_per_s": row.get("enqueue_calls_per_s"),
        "calls_per_s": row.get("calls_per_s"), "timed_out": row.get("timed_out", False),
        "error": row.get("error"),
    }  # fmt: skip


def _weave(cfg: Config) -> dict[str, Any]:
    window_s = cfg.burst_weave_loop_s + cfg.burst_weave_drain_s
    with harness.sink("count") as s:
        argv = [sys.executable, "-m", "bench.scenarios.weave_burst", "--url", s.url,
                "--calls", str(cfg.burst_calls), "--loop-s", str(cfg.burst_weave_loop_s),
                "--drain-s", str(cfg.burst_weave_drain_s), "--project", harness.PROJECT]
        (row,), _wall_s = harness.run_drivers([argv], window_s)
    attempted = row.get("calls_attempted") or 0
    stored = row.get("calls_at_sink_after_drain_window") or 0
    return {
        "contender": "weave-batched", "mode": "batched", "producers": 1,
        "calls_offered": cfg.burst_calls, "calls_attempted": attempted,
        "calls_not_attempted_in_time": row.get("calls_not_attempted_in_time"),
        "dropped_by_client": row.get("dropped_by_client"), "calls_at_sink": stored,
        # Dropped calls are lost for good; the rest still queued may arrive later.
        "calls_lost": row.get("dropped_by_client"),
        "calls_still_queued_at_window_end": attempted - stored - (row.get("dropped_by_client") or 0),
        "enqueue_calls_per_s": row.get("enqueue_calls_per_s"),
        "timed_out": False, "error": row.get("error"),
    }  # fmt: skip


def run(cfg: Config, repeat: int) -> list[dict[str, Any]]:
    runners = [r for name, r in (("engine", _engine), ("weave-batched", _weave))
               if name in cfg.contenders]
    rows = []
    for _ in range(repeat):
        for runner in runners:
            row = runner(cfg)
            row.update({"record": "run", "scenario": "burst", "case": "burst",
                        "profile": "small", "compression": "none", "sink": "count"})
            rows.append(row)
    return rows
