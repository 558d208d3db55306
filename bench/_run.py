"""Bench configuration, repeats and medians: what ``python -m bench`` runs, and how often."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

# Fields that identify one measured configuration; everything numeric besides is a metric.
KEY_FIELDS = ("scenario", "case", "contender", "mode", "profile", "producers", "compression",
              "sink")


@dataclass(frozen=True)
class Config:
    """Call counts and time bounds per scenario. Peers get fewer calls: they are slower.

    Every run is bounded twice, in calls and in seconds (``timeout_s``); rates are what
    the summary compares, so unequal counts are fair.
    """

    quick: bool
    ring_count: int
    ring_seconds: float
    producer_calls: dict[str, int]
    e2e_producers: tuple[int, ...]
    e2e_profiles: tuple[str, ...]
    e2e_calls: dict[str, dict[str, int]]  # contender -> profile -> calls per run
    sqlite_calls: dict[str, int]  # contender -> calls for the SQLite (exact loss) run
    matrix_calls: dict[str, int]  # contender -> calls per run of the matrix scenario
    pipe_calls: int  # calls per ingest and relay run
    fault_calls: dict[str, int]
    outage_s: float
    burst_calls: int
    burst_weave_loop_s: float
    burst_weave_drain_s: float
    timeout_s: float
    contenders: tuple[str, ...] = ("engine", "weave-batched", "weave-op", "naive")

    def scaled(self, factor: float, contenders: tuple[str, ...] | None) -> Config:
        """The same plan with every call count times ``factor`` (at least 20 calls)."""
        def scale(n: int) -> int:
            return max(20, int(n * factor))

        return Config(
            quick=self.quick, ring_count=scale(self.ring_count), ring_seconds=self.ring_seconds,
            producer_calls={k: scale(v) for k, v in self.producer_calls.items()},
            e2e_producers=self.e2e_producers, e2e_profiles=self.e2e_profiles,
            e2e_calls={c: {p: scale(n) for p, n in per.items()}
                       for c, per in self.e2e_calls.items()},
            sqlite_calls={k: scale(v) for k, v in self.sqlite_calls.items()},
            matrix_calls={k: scale(v) for k, v in self.matrix_calls.items()},
            pipe_calls=scale(self.pipe_calls),
            fault_calls={k: scale(v) for k, v in self.fault_calls.items()},
            outage_s=self.outage_s, burst_calls=scale(self.burst_calls),
            burst_weave_loop_s=self.burst_weave_loop_s,
            burst_weave_drain_s=self.burst_weave_drain_s, timeout_s=self.timeout_s,
            contenders=contenders or self.contenders,
        )


FULL = Config(
    quick=False, ring_count=200_000, ring_seconds=3.0,
    producer_calls={"engine": 50_000, "weave-batched": 5_000, "weave-op": 500,
                    "weave-op+engine": 500},
    e2e_producers=(1, 2, 4), e2e_profiles=("small", "eval", "large"),
    e2e_calls={
        "engine": {"small": 200_000, "eval": 100_000, "large": 4_000},
        "weave-batched": {"small": 3_000, "eval": 2_000, "large": 200},
        "weave-op": {"small": 300, "eval": 300, "large": 60},
        "naive": {"small": 3_000, "eval": 2_000, "large": 300},
    },
    sqlite_calls={"engine": 20_000, "weave-batched": 2_000, "naive": 2_000},
    matrix_calls={"engine": 100_000, "weave-batched": 3_000}, pipe_calls=100_000,
    fault_calls={"engine": 20_000, "weave-batched": 2_000},
    outage_s=3.0, burst_calls=1_000_000, burst_weave_loop_s=30.0, burst_weave_drain_s=10.0,
    timeout_s=180.0,
)  # fmt: skip

QUICK = Config(
    quick=True, ring_count=20_000, ring_seconds=0.5,
    producer_calls={"engine": 5_000, "weave-batched": 500, "weave-op": 100,
                    "weave-op+engine": 100},
    e2e_producers=(2,), e2e_profiles=("eval",),
    e2e_calls={
        "engine": {"small": 5_000, "eval": 4_000, "large": 200},
        "weave-batched": {"small": 300, "eval": 300, "large": 40},
        "weave-op": {"small": 50, "eval": 50, "large": 20},
        "naive": {"small": 300, "eval": 300, "large": 40},
    },
    sqlite_calls={"engine": 2_000, "naive": 200},
    matrix_calls={"engine": 4_000, "weave-batched": 300}, pipe_calls=4_000,
    fault_calls={"engine": 2_000, "weave-batched": 200},
    outage_s=1.0, burst_calls=50_000, burst_weave_loop_s=3.0, burst_weave_drain_s=2.0,
    timeout_s=40.0,
)  # fmt: skip


def key_of(row: dict[str, Any]) -> tuple:
    return tuple(row.get(name) for name in KEY_FIELDS)


def _is_metric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def medians(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration: the median of every metric, with ``<metric>_min/_max``.

    A metric missing (None) in some runs is the median of the runs that have it; any
    run's error or timeout is kept, so a bad run is never averaged away silently.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(key_of(run), []).append(run)
    rows = []
    for group in groups.values():
        row = {k: v for k, v in group[0].items() if not _is_metric(v)}
        row["record"] = "median"
        row["runs"] = len(group)
        metric_names = {k for run in group for k, v in run.items() if _is_metric(v)}
        for name in sorted(metric_names - set(KEY_FIELDS)):
            values = [run[name] for run in group if _is_metric(run.get(name))]
            row[name] = statistics.median(values)
            if len(group) > 1:
                row[name + "_min"], row[name + "_max"] = min(values), max(values)
        for name in KEY_FIELDS:
            row[name] = group[0].get(name)
        row["errors"] = [run["error"] for run in group if run.get("error")]
        row["timed_out"] = any(run.get("timed_out") for run in group)
        rows.append(row)
    return rows
