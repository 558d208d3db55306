"""distant: calls/s toward a server a round trip away, as a hosted trace server is.

The decoding sink answers every ingest request 100 ms late (``bench.decode_sink
--latency-ms``): a continent away plus the server's own time. Dicts with ISO-8601 string
timestamps (the path users take), eval payloads, zstd (what ``compression = "auto"`` picks
toward a server on another machine); the engine with 2 and 4 producer processes, weave
0.54.0's batched client in 2 processes in the same run.

What bounds it: a POST holds its records in the producers' rings until it is acknowledged,
so at most the rings' bytes (``ring_bytes`` per producer, 16 MiB) are in flight, and calls/s
is at most those bytes / the round trip. The sender grows its bodies until a share of the
rings fills every slot of ``max_in_flight`` (``SizeTarget``'s slow start and cap), so more
producers (or a larger ``ring_bytes``) carry more per round trip; on this 2-core box the
sink's decoding (~22 µs of CPU per call) caps what any sender gets through.
"""

from __future__ import annotations

from typing import Any

from bench import harness
from bench._cells import flags, num, spread
from bench._run import Config
from bench.scenarios import matrix

LATENCY_MS = 100.0
PRODUCER_COUNTS = (2, 4)


def measure(contender: str, producers: int, calls: int, timeout_s: float) -> dict[str, Any]:
    with harness.sink("decode", latency_ms=LATENCY_MS) as s:
        commands = matrix.argvs(contender, s.url, calls, "dicts-iso", "zstd", timeout_s,
                                producers)
        sink_cpu0_s = s.cpu_s()
        rows, _wall_s = harness.run_drivers(commands, timeout_s)
        sink_cpu_s = s.cpu_s() - sink_cpu0_s
        received = s.calls_received()
    row = matrix.summarize(contender, "dicts-iso", "zstd", "decode", rows, sink_cpu_s,
                           received, None)
    return {**row, "scenario": "distant", "producers": producers, "latency_ms": LATENCY_MS,
            "case": f"{contender}, {producers} producers, {LATENCY_MS:g} ms"}


def run(cfg: Config, repeat: int) -> list[dict[str, Any]]:
    plan = [("engine", p) for p in PRODUCER_COUNTS if "engine" in cfg.contenders]
    if "weave-batched" in cfg.contenders:
        plan.append(("weave-batched", 2))
    return [measure(contender, producers, cfg.matrix_calls[contender], cfg.timeout_s)
            for _ in range(repeat) for contender, producers in plan]


def section(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| contender | producer processes | compression | calls/s (median, min–max) | "
             "producer CPU µs/call | sender CPU µs/call | sink CPU µs/call | wire x | lost | "
             "notes |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in sorted(rows, key=lambda r: (r["contender"] != "engine", r["producers"])):
        wire = r.get("wire_reduction_x")
        lines.append(
            f"| {r['contender']} | {r['producers']} | "
            f"{r['compression'] if r['contender'] == 'engine' else 'never compresses'} | "
            f"{spread(r, 'calls_per_s')} | {num(r.get('producer_cpu_us_per_call'), 1)} | "
            f"{num(r.get('sender_cpu_us_per_call'), 1)} | {num(r.get('sink_cpu_us_per_call'), 1)} | "
            f"{'–' if wire is None else f'{wire:.1f}'} | {r.get('calls_lost', '–')} | {flags(r)} |")
    return lines
