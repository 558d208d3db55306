"""``python -m bench``: every scenario, each contender in a fresh process, one report.

    python -m bench [--quick] [--scenarios ring,producer,e2e,matrix,pipes,senders,distant,faults,burst] [--repeat N]
                    [--contenders engine,weave-batched,weave-op,naive] [--scale F] [--out DIR]

Writes ``<scenario>.jsonl`` (a machine line, every run, the medians), ``summary.md`` and
PNG plots into ``--out`` (default ``bench/results``; with ``--quick``, the scratch folder
``bench/scratch``, which git ignores: a smoke run never overwrites the committed results).
See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench import _report, harness
from bench._run import FULL, QUICK, Config, medians
from bench.scenarios import burst, distant, e2e, faults, matrix, pipes, producer, ring, senders

SCENARIOS = {"ring": ring, "producer": producer, "e2e": e2e, "matrix": matrix, "pipes": pipes,
             "senders": senders, "distant": distant, "faults": faults, "burst": burst}
CONTENDERS = ("engine", "weave-batched", "weave-op", "naive")
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
QUICK_OUT = Path(__file__).resolve().parent / "scratch"


def _names(text: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {what} {unknown}; choose from {allowed}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke check, < 2 minutes")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        type=lambda t: _names(t, tuple(SCENARIOS), "scenario"))
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        type=lambda t: _names(t, CONTENDERS, "contender"))
    parser.add_argument("--repeat", type=int, default=None,
                        help="runs per configuration (median, min-max); default 3, quick 1")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every call count")
    parser.add_argument("--out", type=Path, default=None,
                        help="results directory (default bench/results; --quick: bench/scratch)")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild summary.md and the plots from the .jsonl files in --out")
    args = parser.parse_args(argv)
    args.repeat = args.repeat or (1 if args.quick else 3)
    if args.out is None:
        args.out = QUICK_OUT if args.quick else DEFAULT_OUT
    elif args.quick and args.out.resolve() == DEFAULT_OUT and not args.report_only:
        parser.error("--quick never writes into bench/results (the committed full-run "
                     "results): leave --out out (bench/scratch) or pick another folder")
    if args.repeat < 1 or args.scale <= 0:
        parser.error("--repeat must be >= 1 and --scale > 0")
    return args


def _write_jsonl(path: Path, machine: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    with path.open("w") as out:
        for row in [machine, *rows]:
            out.write(json.dumps(row, separators=(",", ":")) + "\n")


def run_scenario(name: str, cfg: Config, repeat: int) -> list[dict[str, Any]]:
    """Runs plus medians (ring reports medians itself)."""
    rows = SCENARIOS[name].run(cfg, repeat)
    runs = [r for r in rows if r.get("record") == "run"]
    return rows if not runs else runs + medians(runs)


def _read_results(out: Path) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]],
                                      dict[str, dict[str, Any]]]:
    """The machine line of the first file, every scenario's medians, as written, and every
    scenario's own machine line."""
    machines: dict[str, dict[str, Any]] = {}
    results: dict[str, list[dict[str, Any]]] = {}
    for name in SCENARIOS:
        path = out / f"{name}.jsonl"
        if not path.exists():
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        machines[name] = next((r for r in rows if r.get("record") == "machine"), {})
        results[name] = [r for r in rows if r.get("record") == "median"]
    machine = next(iter(machines.values()), {})
    return machine, results, machines


def _write_report(machine: dict[str, Any], results: dict[str, list[dict[str, Any]]],
                  args: argparse.Namespace,
                  machines: dict[str, dict[str, Any]] | None = None) -> None:
    summary = _report.summary_markdown(machine, results, args, machines)
    (args.out / "summary.md").write_text(summary)
    _report.plot_all(results, args.out)
    print(summary)


def _compile_bytecode() -> None:
    """Byte-compile the engine (and the bench) first, as an installed package is: with
    PYTHONDONTWRITEBYTECODE set, as on some CI machines, an editable checkout is otherwise
    compiled from source again in every process the bench starts, a start-up that users'
    installs do not pay and the pipes rows (engine ingest's workers) would count."""
    import compileall

    for package in ("engine", "bench"):
        compileall.compile_dir(harness.REPO / package, quiet=1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only:
        machine, results, machines = _read_results(args.out)
        _write_report(machine, results, args, machines)
        return 0
    cfg = (QUICK if args.quick else FULL).scaled(args.scale, args.contenders)
    args.out.mkdir(parents=True, exist_ok=True)
    _compile_bytecode()
    machine = harness.machine_info()
    print(f"bench: {machine['cpu_model']}, {machine['cpus']} CPUs, Python {machine['python']}, "
          f"load {machine['load_avg_1_5_15'][0]:.2f}", file=sys.stderr)
    results: dict[str, list[dict[str, Any]]] = {}
    for name in args.scenarios:
        began = time.monotonic()
        rows = run_scenario(name, cfg, args.repeat)
        _write_jsonl(args.out / f"{name}.jsonl", machine, rows)
        results[name] = [r for r in rows if r.get("record") == "median"]
        print(f"bench: {name} done in {time.monotonic() - began:.0f} s", file=sys.stderr)
    machine["load_avg_at_end_1_5_15"] = list(os.getloadavg())
    if set(args.scenarios) != set(SCENARIOS):
        # a run of some scenarios: the report keeps the others' last results from their
        # .jsonl files, each section not measured with the header's run saying which it was
        machine, results, machines = _read_results(args.out)
        _write_report(machine, results, args, machines)
        return 0
    _write_report(machine, results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
