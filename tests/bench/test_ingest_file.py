"""bench.ingest_file runs engine ingest end to end (a real sink, the command's processes)
and splits the CPU between them."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ingest_file_reports_rate_loss_and_cpu_per_process():
    result = subprocess.run(
        [sys.executable, "-m", "bench.ingest_file", "--lines", "20000", "--repeat", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    run, summary = map(json.loads, result.stdout.strip().splitlines()[-2:])
    assert run["calls_lost"] == 0 and run["error"] is None and run["calls_per_s"] > 0
    for role in ("command", "workers", "sender", "sink"):
        assert run[f"{role}_cpu_us_per_call"] > 0, role
    assert summary["lost"] == 0 and summary["median"]["calls_per_s"] == run["calls_per_s"]
