"""senders: calls/s delivered against the number of sender processes (``senders``).

The engine alone (eval payloads, wire Structs, 2 producer processes, count sink), with 1 and
2 senders, uncompressed and zstd. What to expect: a sender takes one core at most; a second
one helps only where the first was the bottleneck and a core is free for it. On a 2-core box
the producers, the sink and the senders already share both cores, so a second sender takes
CPU from them and calls/s stays flat or drops (more so uncompressed, where a sender is far
from saturated); with zstd one sender needs ~13 µs per call, so two help once producers and
sink leave a core's worth of time. On a box with many cores and many producers, calls/s grows
with the senders until the sink or the network saturates (each sender moves ~200k
uncompressed or ~75k zstd eval calls/s on one core: ``python -m bench.sender_drain``).
"""

from __future__ import annotations

from typing import Any

from bench import harness
from bench._cells import flags, num, spread
from bench._run import Config

SENDERS = (1, 2)
_PRODUCERS = 2
_PROFILE = "eval"


def measure(senders: int, compression: str, calls: int, timeout_s: float) -> dict[str, Any]:
    with harness.sink("count") as s:
        argv = harness.driver_argv("engine", s.url, calls, _PROFILE, timeout_s,
                                   producers=_PRODUCERS, compression=compression)
        argv += ["--senders", str(senders)]
        sink_cpu0 = s.cpu_s()
        (row,), _wall_s = harness.run_drivers([argv], timeout_s)
        sink_cpu_s = s.cpu_s() - sink_cpu0
        received = s.calls_received()
    enqueued = row.get("calls_enqueued") or 0
    return {
        "record": "run", "scenario": "senders", "case": f"{senders} senders",
        "contender": "engine", "mode": f"senders={senders}", "profile": _PROFILE,
        "producers": _PRODUCERS, "compression": compression, "sink": "count",
        "senders": row.get("senders"), "calls_enqueued": enqueued,
        "calls_lost": enqueued - received, "calls_per_s": row.get("calls_per_s"),
        "producer_cpu_us_per_call": row.get("loop_cpu_us_per_call"),
        "sender_cpu_us_per_call": row.get("sender_cpu_us_per_call"),
        "sink_cpu_us_per_call": sink_cpu_s / max(enqueued, 1) * 1e6,
        "timed_out": row.get("timed_out", False), "error": row.get("error"),
    }  # fmt: skip


def run(cfg: Config, repeat: int) -> list[dict[str, Any]]:
    if "engine" not in cfg.contenders:
        return []
    calls = cfg.matrix_calls["engine"]
    return [measure(senders, compression, calls, cfg.timeout_s)
            for _ in range(repeat) for compression in ("none", "zstd") for senders in SENDERS]


def section(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| compression | senders | calls/s (median, min–max) | producer CPU µs/call | "
             "sender CPU µs/call (all senders) | sink CPU µs/call | lost | notes |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in sorted(rows, key=lambda r: (r["compression"], r["mode"])):
        lines.append(f"| {r['compression']} | {r['mode'].split('=')[1]} | "
                     f"{spread(r, 'calls_per_s')} | {num(r.get('producer_cpu_us_per_call'), 1)} | "
                     f"{num(r.get('sender_cpu_us_per_call'), 1)} | "
                     f"{num(r.get('sink_cpu_us_per_call'), 1)} | {r.get('calls_lost', '–')} | "
                     f"{flags(r)} |")
    return lines
