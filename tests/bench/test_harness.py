"""``python -m bench --quick`` on a tiny plan: every output is produced and well formed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench._run import medians

pytestmark = [pytest.mark.slow, pytest.mark.integration]

_REPO = Path(__file__).resolve().parents[2]
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_MAX_PNG_BYTES = 200_000


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench-results")
    argv = [sys.executable, "-m", "bench", "--quick", "--scenarios", "e2e,faults",
            "--contenders", "engine", "--scale", "0.05", "--out", str(out)]
    done = subprocess.run(argv, cwd=_REPO, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, f"python -m bench failed:\n{done.stderr[-3000:]}"
    return out


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_scenario_writes_machine_runs_and_medians(quick_run: Path) -> None:
    for scenario in ("e2e", "faults"):
        rows = _lines(quick_run / f"{scenario}.jsonl")
        assert rows[0]["record"] == "machine"
        assert rows[0]["cpus"] >= 1 and rows[0]["python"]
        records = {r["record"] for r in rows[1:]}
        assert records == {"run", "median"}, f"{scenario}: {records}"


def test_e2e_counts_every_call_of_the_engine_at_the_sink(quick_run: Path) -> None:
    rows = [r for r in _lines(quick_run / "e2e.jsonl") if r["record"] == "median"]
    engine = [r for r in rows if r["contender"] == "engine"]
    assert {(r["compression"], r["sink"]) for r in engine} >= {("none", "count"),
                                                                ("zstd", "count"),
                                                                ("none", "sqlite")}
    for row in engine:
        assert not row["errors"] and not row["timed_out"], row
        assert row["calls_enqueued"] == row["calls_offered"] > 0
        assert row["calls_lost"] == 0 and row["calls_duplicated"] == 0
        assert row["calls_per_s"] > 0 and row["mb_per_s_raw"] > 0
    zstd = next(r for r in engine if r["compression"] == "zstd")
    assert zstd["wire_bytes"] < zstd["raw_bytes_at_sink"]


def test_faults_report_delivered_and_upload_bytes_per_case(quick_run: Path) -> None:
    rows = [r for r in _lines(quick_run / "faults.jsonl") if r["record"] == "median"]
    assert {r["case"] for r in rows} == {"limit_413", "storm", "outage"}
    for row in rows:
        assert row["calls_delivered"] == row["calls_enqueued"] > 0, row
        assert row["accepted_upload_bytes"] > 0


def test_summary_has_targets_and_tables(quick_run: Path) -> None:
    summary = (quick_run / "summary.md").read_text()
    for heading in ("## Targets", "## End to end", "## Faults"):
        assert heading in summary
    assert "| count | eval | 2 | engine" in summary


def test_plots_are_small_pngs(quick_run: Path) -> None:
    for name in ("e2e_throughput.png", "e2e_latency_cdf.png"):
        data = (quick_run / name).read_bytes()
        assert data.startswith(_PNG_MAGIC)
        assert len(data) < _MAX_PNG_BYTES


def test_medians_keep_min_max_and_errors() -> None:
    key = {"scenario": "e2e", "case": "c", "contender": "engine", "mode": "m", "profile": "eval",
           "producers": 2, "compression": "none", "sink": "count"}
    runs = [{**key, "record": "run", "calls_per_s": v, "error": e, "timed_out": False}
            for v, e in ((3.0, None), (1.0, "boom"), (2.0, None))]
    (row,) = medians(runs)
    assert (row["calls_per_s"], row["calls_per_s_min"], row["calls_per_s_max"]) == (2.0, 1.0, 3.0)
    assert row["errors"] == ["boom"] and row["runs"] == 3
