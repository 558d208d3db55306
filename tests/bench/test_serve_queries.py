"""bench.serve_queries loads eval traces into a real engine serve with engine ingest and
checks the answer of every query it times."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_serve_queries_times_every_trace_view_query_and_checks_its_answer(tmp_path):
    out = tmp_path / "queries.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "bench.serve_queries", "--calls", "2000", "--repeat", "1",
         "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    load = next(r for r in records if r["record"] == "load")
    assert load["calls"] == 2000 and load["ingest_calls_per_s"] > 0
    answered = [r for r in records if r["record"] == "query"]
    assert len(answered) == 14 and all(r["right"] and r["wall_ms"] > 0 for r in answered)
    assert "| root calls, newest 50 |" in result.stdout
