"""producer: CPU µs per traced call paid by the eval process itself.

Engine: ``call_start`` + ``call_end`` (Structs and dicts) and the ``tracer.call`` context
manager, one producer. Peers: weave 0.54.0's batched client and ``@weave.op``. Every
contender writes to a fresh ``engine serve --store count`` sink.

Every contender cycles through the same 10,000 pre-built payloads (~60 MB): each call's
data comes from memory, not cache, the costlier case and the one the target is judged on.
``startend, in cache`` is the same loop over 64 payloads (they stay in the core's cache),
like an eval loop tracing the inputs and output it has just built.

``cpu_us_per_call`` is what the traced process pays, all its threads (getrusage): for the
engine the producer process (its sender is another process), for weave the whole process
over enqueue and flush, since weave's sender thread runs inside it. The main thread's share
of the enqueue loop and the client side's total (the engine's sender process included)
are reported beside it.
"""

from __future__ import annotations

from typing import Any

from bench import harness
from bench._run import Config

_PROFILE = "eval"
_ENGINE_MODES = ("startend", "dicts", "ctx")
IN_CACHE = "startend, in cache"  # the startend loop over a pool of payloads that stays cached
_IN_CACHE_PAYLOADS = 64


def _one(contender: str, mode: str | None, calls: int, cfg: Config) -> dict[str, Any]:
    hot = mode == IN_CACHE
    with harness.sink("count") as s:
        argv = harness.driver_argv(contender, s.url, calls, _PROFILE, cfg.timeout_s,
                                   mode="startend" if hot else mode,
                                   distinct_payloads=_IN_CACHE_PAYLOADS if hot else None)
        (row,), _wall_s = harness.run_drivers([argv], cfg.timeout_s)
    return {
        "record": "run", "scenario": "producer", "case": "cpu per call",
        "contender": contender, "mode": mode if hot else row.get("mode", mode),
        "profile": _PROFILE, "distinct_payloads": row.get("distinct_payloads"),
        "producers": 1, "compression": "none", "sink": "count",
        "calls_enqueued": row.get("calls_enqueued"),
        "cpu_us_per_call": _traced_process_cpu(contender, row),
        "main_thread_cpu_us_per_call": row.get("loop_main_thread_cpu_us_per_call"),
        "process_cpu_us_per_call": row.get("process_cpu_us_per_call"),
        "enqueue_calls_per_s": row.get("enqueue_calls_per_s"),
        "timed_out": row.get("timed_out", False), "error": row.get("error"),
    }  # fmt: skip


def _traced_process_cpu(contender: str, row: dict[str, Any]) -> float | None:
    if contender == "engine":
        return row.get("loop_cpu_us_per_call")
    return row.get("process_cpu_us_per_call")


def run(cfg: Config, repeat: int) -> list[dict[str, Any]]:
    plan: list[tuple[str, str | None]] = []
    if "engine" in cfg.contenders:
        plan += [("engine", mode) for mode in (*_ENGINE_MODES, IN_CACHE)]
    plan += [(c, None) for c in ("weave-batched", "weave-op") if c in cfg.contenders]
    if "weave-op" in cfg.contenders:  # the same @weave.op program with our binding installed
        plan.append(("weave-op+engine", None))
    return [_one(contender, mode, cfg.producer_calls[contender], cfg)
            for _ in range(repeat) for contender, mode in plan]
