"""bench.floors runs end to end (a real Engine, a count server, SQLite, zstd) and reports
every floor docs/throughput.md quotes."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_floors_report_every_figure_the_throughput_page_quotes():
    result = subprocess.run(
        [sys.executable, "-m", "bench.floors", "--calls", "3000", "--repeat", "1",
         "--payloads", "50,200"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    medians = json.loads(result.stdout.strip().splitlines()[-1])["median"]
    for pool in (50, 200):
        for key in ("engine_call_start_end", "msgspec_encode", "copy_encoded_bytes",
                    "engine_dicts_iso", "msgspec_encode_dicts"):
            assert medians[f"{key}_{pool}"] > 0, key
    for key in ("decode_and_build_rows", "sqlite_insert_commit", "sqlite_no_read_indexes",
                "zstd_level1"):
        assert medians[key] > 0, key
    assert medians["zstd_ratio"] > 2  # eval bodies compress ~5x
