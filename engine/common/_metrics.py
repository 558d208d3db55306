"""Prometheus text exposition (format 0.0.4) of engine, relay and server statistics.

Stats arrive as nested dicts of numbers (``Engine.stats()``, the server's counters); each
number becomes one sample named ``engine_<section>_<key>``. Cumulative values are counters
(suffix ``_total``); the names in :data:`GAUGES` go up and down and are gauges.
Per-slot ring detail and non-numeric values are left out: they do not aggregate.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from aiohttp import web

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
GAUGES = frozenset({
    "sender_pid", "sender_heartbeat_ns", "flush_request_ns", "shutdown_request",
    "in_flight_requests", "in_flight_bytes", "concurrency_limit", "size_target_bytes",
    "complete_mode", "compressing", "pending_starts", "latency_p50_us", "latency_p90_us",
    "latency_p99_us", "latency_max_us", "slots_in_use", "undelivered", "parked_items",
    "retention_last_pass_ms",
})  # fmt: skip
_SKIPPED = frozenset({"slots"})


def render(stats: Mapping[str, Any], prefix: str = "engine") -> str:
    """Every numeric leaf of ``stats`` as a typed Prometheus sample."""
    lines: list[str] = []
    for name, key, value in _leaves(stats, prefix):
        kind = "gauge" if key in GAUGES else "counter"
        metric = name if kind == "gauge" else f"{name}_total"
        lines.append(f"# TYPE {metric} {kind}")
        lines.append(f"{metric} {_number(value)}")
    return "\n".join(lines) + "\n"


def _leaves(stats: Mapping[str, Any], prefix: str) -> Iterator[tuple[str, str, int | float]]:
    for key, value in stats.items():
        if key in _SKIPPED:
            continue
        name = f"{prefix}_{_sanitize(key)}"
        if isinstance(value, Mapping):
            yield from _leaves(value, name)
        elif isinstance(value, (int, float)):  # bool is an int: 0/1
            yield name, key, value


def _sanitize(key: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in str(key))


def _number(value: int | float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(int(value))


def response(stats: Mapping[str, Any], prefix: str = "engine") -> web.Response:
    return web.Response(body=render(stats, prefix).encode(), headers={"Content-Type": CONTENT_TYPE})
