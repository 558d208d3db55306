"""matrix: the paths users take, each measured with the CPU it costs every process.

{wire Structs, dicts with ISO-8601 string timestamps} x {uncompressed, zstd} x {count sink,
decoding sink, SQLite via ``engine serve``}, 2 producer processes, eval payloads (~4 KB). The
engine runs every cell; weave 0.54.0's batched client runs every (payload, sink) pair in the
same run on the same payloads and sink (it never compresses, so one run serves both
compression rows). Per run, from the processes themselves:

- calls/s: calls enqueued / (enqueue loop + flush) of the slowest producer;
- producer CPU per call: ``getrusage`` of each producer process around its loop (weave: its
  main thread's CPU over the loop, the traced program's own share), and of that the
  driver's own cost (building items, ids, timestamps with a tracer that does nothing);
- sender CPU per call: ``/proc/PID/stat`` of the engine's sender process(es) from release
  to the end of the flush (weave: its process CPU over loop and flush minus the main
  thread's, i.e. its sender and flush threads);
- sink CPU per call: ``/proc/PID/stat`` of the sink process over the same window, which
  says what the harness costs and is the same work whoever sends.

"dicts" for weave means what its own client is fed (dicts, datetimes as ``datetime``);
"dicts-iso" the same with ISO strings.
"""

from __future__ import annotations

from typing import Any

from bench import harness
from bench._cells import flags, num, spread
from bench._run import Config

PAYLOADS = ("structs", "dicts-iso")
COMPRESSIONS = ("none", "zstd")
PRODUCERS = 2
_PROFILE = "eval"
_ENGINE_MODE = {"structs": "startend", "dicts-iso": "dicts-iso"}
_WEAVE_MODE = {"structs": "batched", "dicts-iso": "batched-iso"}



def argvs(contender: str, url: str, calls: int, payload: str, compression: str,
          timeout_s: float, producers: int = PRODUCERS) -> list[list[str]]:
    """The driver commands for one cell: the engine in one driver of ``producers``
    processes, weave in ``producers`` drivers sharing the calls."""
    if contender == "engine":
        return [harness.driver_argv("engine", url, calls, _PROFILE, timeout_s,
                                    producers=producers, compression=compression,
                                    mode=_ENGINE_MODE[payload])]
    return [harness.driver_argv(contender, url, n, _PROFILE, timeout_s, mode=_WEAVE_MODE[payload])
            for n in harness.split_calls(calls, producers)]


def measure(contender: str, payload: str, compression: str, sink: str, calls: int,
            timeout_s: float) -> dict[str, Any]:
    with harness.sink(sink) as s:
        commands = argvs(contender, s.url, calls, payload, compression, timeout_s)
        sink_cpu0_s = s.cpu_s()
        rows, _wall_s = harness.run_drivers(commands, timeout_s)
        sink_cpu_s = s.cpu_s() - sink_cpu0_s
        received = s.calls_received()
        distinct = s.distinct_calls() if sink == "sqlite" else None
    return summarize(contender, payload, compression, sink, rows, sink_cpu_s, received, distinct)


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _active_s(rows: list[dict[str, Any]]) -> float | None:
    spans = [r["loop_wall_s"] + r["flush_s"] if r.get("flush_s") is not None else None
             for r in rows]
    return max(spans) if spans and None not in spans else None  # type: ignore[type-var]


def summarize(contender: str, payload: str, compression: str, sink: str,
              rows: list[dict[str, Any]], sink_cpu_s: float, received: int,
              distinct: int | None) -> dict[str, Any]:
    enqueued = sum(r.get("calls_enqueued") or 0 for r in rows)
    n = max(enqueued, 1)
    active_s = _active_s(rows)
    if contender == "engine":
        producer_us = rows[0].get("loop_cpu_us_per_call")
        sender_us = rows[0].get("sender_cpu_us_per_call")
        driver_us = rows[0].get("driver_cpu_us_per_call")
        wire, raw = rows[0].get("bytes_sent_wire"), rows[0].get("bytes_sent_raw")
    else:  # one process per producer, its sender a thread of it
        producer_us = _mean([r.get("loop_main_thread_cpu_us_per_call") for r in rows])
        sender_us = _mean([_weave_sender_us(r) for r in rows])
        driver_us, wire, raw = None, None, None
    return {
        "record": "run", "scenario": "matrix", "case": f"{payload}, {compression}, {sink}",
        "contender": contender, "mode": payload, "profile": _PROFILE, "producers": PRODUCERS,
        "compression": compression if contender == "engine" else "none", "sink": sink,
        "calls_enqueued": enqueued, "calls_received_at_sink": received,
        "calls_distinct_at_sink": distinct,
        "calls_lost": enqueued - (distinct if distinct is not None else received),
        "calls_per_s": enqueued / active_s if active_s else None,
        "producer_cpu_us_per_call": producer_us, "driver_cpu_us_per_call": driver_us,
        "sender_cpu_us_per_call": sender_us, "sink_cpu_us_per_call": sink_cpu_s / n * 1e6,
        "wire_reduction_x": raw / wire if raw and wire else None,
        "timed_out": any(r.get("timed_out") for r in rows),
        "error": next((r["error"] for r in rows if r.get("error")), None),
    }  # fmt: skip


def _weave_sender_us(row: dict[str, Any]) -> float | None:
    """weave's threads besides the main one, over loop and flush: its sender's CPU."""
    whole, main = row.get("process_cpu_us_per_call"), row.get("loop_main_thread_cpu_us_per_call")
    return None if whole is None or main is None else max(whole - main, 0.0)


def plan(cfg: Config) -> list[tuple[str, str, str, str]]:
    """(contender, payload, compression, sink) of one repeat; weave once per payload and sink."""
    cells = []
    for sink in harness.SINKS:
        for payload in PAYLOADS:
            if "engine" in cfg.contenders:
                cells += [("engine", payload, c, sink) for c in COMPRESSIONS]
            if "weave-batched" in cfg.contenders:
                cells.append(("weave-batched", payload, "none", sink))
    return cells


def run(cfg: Config, repeat: int) -> list[dict[str, Any]]:
    rows = []
    for _ in range(repeat):
        for contender, payload, compression, sink in plan(cfg):
            rows.append(measure(contender, payload, compression, sink,
                                cfg.matrix_calls[contender], cfg.timeout_s))
    return rows


# ---- the summary's table -----------------------------------------------------------------------


def section(rows: list[dict[str, Any]]) -> list[str]:
    """One line per cell: the engine's rows, then weave's on the same payloads and sink."""
    lines = ["| sink | payload | contender | compression | calls/s (median, min–max) | "
             "producer CPU µs/call (driver's own) | sender CPU µs/call | sink CPU µs/call | "
             "wire x | lost | notes |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    order = {(s, p): i for i, (s, p) in enumerate((s, p) for s in harness.SINKS for p in PAYLOADS)}
    for r in sorted(rows, key=lambda r: (order.get((r["sink"], r["mode"]), 99),
                                         r["contender"] != "engine", r["compression"])):
        driver = f" ({num(r.get('driver_cpu_us_per_call'), 1)})" if r.get(
            "driver_cpu_us_per_call") is not None else ""
        wire = r.get("wire_reduction_x")
        lines.append(
            f"| {r['sink']} | {r['mode']} | {r['contender']} | "
            f"{r['compression'] if r['contender'] == 'engine' else 'never compresses'} | "
            f"{spread(r, 'calls_per_s')} | {num(r.get('producer_cpu_us_per_call'), 1)}{driver} | "
            f"{num(r.get('sender_cpu_us_per_call'), 1)} | {num(r.get('sink_cpu_us_per_call'), 1)} | "
            f"{'–' if wire is None else f'{wire:.1f}'} | {r.get('calls_lost', '–')} | {flags(r)} |")
    return lines
