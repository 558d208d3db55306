"""ring: records/s and MB/s through the engine ring vs multiprocessing.Queue vs faster-fifo.

Delegates to ``bench.ring`` (each contender and size in its own fresh interpreter there)
and keeps its rows, already medians with min-max over ``repeat`` runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from bench import ring
from bench._run import Config


def run(cfg: Config, repeat: int) -> list[dict[str, Any]]:
    args = argparse.Namespace(repeat=repeat, count=cfg.ring_count, seconds=cfg.ring_seconds)
    rows = []
    for row in ring._measure(args):
        rows.append({
            **row, "record": "median", "scenario": "ring",
            "case": f"{row['record_bytes']} B", "mode": None, "profile": None,
            "compression": None, "sink": None,
        })
    return rows
