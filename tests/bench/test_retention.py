"""bench.retention loads month-old calls into a real engine serve, restarts it with a
retention and checks that exactly the fresh calls a client sent meanwhile are left."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_retention_bench_deletes_every_old_call_and_keeps_the_fresh_ones(tmp_path):
    out = tmp_path / "retention.jsonl"
    result = subprocess.run([sys.executable, "-m", "bench.retention", "--calls", "2000", "--out",
                             str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads(out.read_text().splitlines()[-1])
    assert record["expired"] == 2000 and record["fresh_left"] == record["fresh_sent"] > 0
    assert record["statuses"] == [200] and record["right"]
