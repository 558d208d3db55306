"""e2e: calls/s and MB/s delivered, RSS, latency, loss and duplicates counted at the sink.

For every payload profile and 1, 2, 4 producer processes: the engine (one driver, its
producers forked, compression off and zstd), and the peers (one driver process per
producer, all at once: weave's batched client, ``@weave.op``, the naive client). Each run
gets a fresh ``engine serve --store count`` sink; one extra configuration per contender
runs against SQLite, where distinct stored calls give exact loss and duplicate counts.
"""

from __future__ import annotations

from typing import Any

from bench import harness
from bench._run import Config

_SQLITE_PROFILE, _SQLITE_PRODUCERS = "eval", 2



def _argvs(contender: str, url: str, calls: int, profile: str, producers: int,
           compression: str, timeout_s: float) -> list[list[str]]:
    if contender == "engine":
        return [harness.driver_argv("engine", url, calls, profile, timeout_s,
                                    producers=producers, compression=compression)]
    return [harness.driver_argv(contender, url, n, profile, timeout_s)
            for n in harness.split_calls(calls, producers)]


def _active_s(row: dict[str, Any]) -> float | None:
    if row.get("flush_s") is None:
        return None
    return row["loop_wall_s"] + row["flush_s"]


def measure(contender: str, profile: str, producers: int, compression: str, store: str,
            calls: int, timeout_s: float) -> dict[str, Any]:
    """One run of one contender against a fresh sink: the e2e row."""
    with harness.sink(store) as s:
        argvs = _argvs(contender, s.url, calls, profile, producers, compression, timeout_s)
        rows, wall_s = harness.run_drivers(argvs, timeout_s)
        sink_stats = s.stats()
        sink_rss_kib = s.peak_rss_kib()
        distinct = s.distinct_calls() if store == "sqlite" else None
    return summarize(contender, profile, producers, compression, store, rows, wall_s,
                     sink_stats, sink_rss_kib, distinct)


def summarize(contender: str, profile: str, producers: int, compression: str, store: str,
              rows: list[dict[str, Any]], wall_s: float, sink_stats: dict[str, Any],
              sink_rss_kib: int | None, distinct: int | None) -> dict[str, Any]:
    enqueued = sum(r.get("calls_enqueued") or 0 for r in rows)
    received = int(sink_stats["calls_complete"]) + int(sink_stats["calls_ended"])
    raw_bytes = int(sink_stats["body_bytes"])
    spans = [_active_s(r) for r in rows]
    active_s = max(spans) if spans and None not in spans else None
    engine = rows[0] if contender == "engine" else None
    wire_bytes = engine.get("bytes_sent_wire", raw_bytes) if engine else raw_bytes
    row: dict[str, Any] = {
        "record": "run", "scenario": "e2e", "case": f"{store} sink", "contender": contender,
        "mode": rows[0].get("mode"), "profile": profile, "producers": producers,
        "compression": compression, "sink": store,
        "calls_offered": sum(r.get("calls_offered") or 0 for r in rows),
        "calls_enqueued": enqueued, "calls_received_at_sink": received,
        "wall_s_incl_startup": wall_s, "active_s": active_s,
        "calls_per_s": enqueued / active_s if active_s else None,
        "enqueue_calls_per_s": sum(r.get("enqueue_calls_per_s") or 0 for r in rows),
        "raw_bytes_at_sink": raw_bytes, "wire_bytes": wire_bytes,
        "mb_per_s_raw": raw_bytes / active_s / 1e6 if active_s else None,
        "mb_per_s_wire": wire_bytes / active_s / 1e6 if active_s else None,
        "wire_reduction_x": raw_bytes / wire_bytes if wire_bytes else None,
        "producer_cpu_us_per_call": _mean(r.get("loop_main_thread_cpu_us_per_call") for r in rows),
        "process_cpu_us_per_call": _mean(r.get("process_cpu_us_per_call") for r in rows),
        "peak_rss_kib": _rss(contender, rows, sink_rss_kib),
        "timed_out": any(r.get("timed_out") for r in rows),
        "error": next((r["error"] for r in rows if r.get("error")), None),
    }  # fmt: skip
    row.update(_loss(enqueued, received, distinct))
    if engine:
        row["latency_p50_ms"] = engine.get("latency_p50_us", 0) / 1000
        row["latency_p90_ms"] = engine.get("latency_p90_us", 0) / 1000
        row["latency_p99_ms"] = engine.get("latency_p99_us", 0) / 1000
        row["latency_max_ms"] = engine.get("latency_max_us", 0) / 1000
        row["retries"] = engine.get("retries", 0)
    elif contender == "naive" and enqueued:
        # One synchronous POST per call: each call's enqueue-to-ack is its own duration.
        row["latency_mean_ms"] = sum(r["loop_wall_s"] for r in rows) / enqueued * 1000
    return row


def _loss(enqueued: int, received: int, distinct: int | None) -> dict[str, Any]:
    """Lost and duplicated calls: exact with distinct ids (SQLite), bounds with counts only."""
    if distinct is not None:
        return {"calls_distinct_at_sink": distinct, "calls_lost": enqueued - distinct,
                "calls_duplicated": received - distinct, "loss_counting": "exact"}
    return {"calls_lost": max(0, enqueued - received),
            "calls_duplicated": max(0, received - enqueued), "loss_counting": "count-only"}


def _mean(values: Any) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _rss(contender: str, rows: list[dict[str, Any]], sink_rss_kib: int | None) -> dict[str, Any]:
    if contender == "engine":
        r = rows[0]
        return {"owner": r.get("peak_rss_kib"), "producers": r.get("producer_peak_rss_kib"),
                "sender": r.get("sender_peak_rss_kib"), "sink": sink_rss_kib}
    return {"producers": [r.get("peak_rss_kib") for r in rows], "sink": sink_rss_kib}


def plan(cfg: Config) -> list[tuple[str, str, int, str, str]]:
    """(contender, profile, producers, compression, sink) for every run of one repeat."""
    cells = []
    for profile in cfg.e2e_profiles:
        for producers in cfg.e2e_producers:
            for contender in cfg.contenders:
                compressions = ("none", "zstd") if contender == "engine" else ("none",)
                cells += [(contender, profile, producers, c, "count") for c in compressions]
    cells += [(c, _SQLITE_PROFILE, _SQLITE_PRODUCERS, "none", "sqlite")
              for c in cfg.contenders if c in cfg.sqlite_calls]
    return cells


def run(cfg: Config, repeat: int) -> list[dict[str, Any]]:
    rows = []
    for _ in range(repeat):
        for contender, profile, producers, compression, store in plan(cfg):
            calls = (cfg.sqlite_calls[contender] if store == "sqlite"
                     else cfg.e2e_calls[contender][profile])
            rows.append(measure(contender, profile, producers, compression, store, calls,
                                cfg.timeout_s))
    return rows
