"""``@weave.op`` as users run it: weave 0.54.0 alone, and through the engine's integration
with and without its speedups (``engine.integrations._weave_speedups``).

    python -m bench.weave_op [--calls 1000] [--repeat 3]

Each run is the producer scenario's driver (``bench.peers.weave_client``, modes ``op`` and
``op-engine``): a fresh process calls ``weave.init`` against a fresh
``engine serve --store count``, then one ``@weave.op`` ``--calls`` times with the eval
profile's 4 KB inputs and output, then ``client.finish()``. Contenders alternate within
each repeat (these VMs' speed drifts from one hour to the next). Prints one JSON line per
run and the medians: CPU per call of the whole traced process (all its threads, over the
loop and the flush; for the engine its sender is another process, not counted here) and of
its main thread over the loop.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from typing import Any

from bench import harness

CONTENDERS = {  # name: (harness contender, ENGINE_WEAVE_SPEEDUPS)
    "weave @weave.op": ("weave-op", None),
    "@weave.op + engine, weave's per-call costs kept": ("weave-op+engine", "0"),
    "@weave.op + engine": ("weave-op+engine", "1"),
}
_TIMEOUT_S = 300.0


def one(name: str, calls: int) -> dict[str, Any]:
    contender, speedups = CONTENDERS[name]
    saved = os.environ.get("ENGINE_WEAVE_SPEEDUPS")
    if speedups is not None:
        os.environ["ENGINE_WEAVE_SPEEDUPS"] = speedups
    try:
        with harness.sink("count") as s:
            argv = harness.driver_argv(contender, s.url, calls, "eval", _TIMEOUT_S)
            (row,), _wall_s = harness.run_drivers([argv], _TIMEOUT_S)
    finally:
        if saved is None:
            os.environ.pop("ENGINE_WEAVE_SPEEDUPS", None)
        else:
            os.environ["ENGINE_WEAVE_SPEEDUPS"] = saved
    return {"contender": name, "calls": row.get("calls_enqueued"),
            "process_cpu_us_per_call": row.get("process_cpu_us_per_call"),
            "main_thread_cpu_us_per_call": row.get("loop_main_thread_cpu_us_per_call"),
            "error": row.get("error")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONTENDERS}
    for _ in range(args.repeat):
        for name in CONTENDERS:
            row = one(name, args.calls)
            print(json.dumps(row), flush=True)
            runs[name].append(row)
    for name, rows in runs.items():
        ok = [r for r in rows if not r["error"] and r["process_cpu_us_per_call"]]
        if not ok:
            print(f"{name}: no successful run")
            continue
        cpu = sorted(r["process_cpu_us_per_call"] for r in ok)
        main_cpu = sorted(r["main_thread_cpu_us_per_call"] or 0.0 for r in ok)
        print(f"{name}: {statistics.median(cpu):,.0f} µs of CPU per call "
              f"({cpu[0]:,.0f}–{cpu[-1]:,.0f}), main thread {statistics.median(main_cpu):,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
