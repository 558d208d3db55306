"""The pipes scenario: ``engine ingest`` of a file and ``engine relay``, counted at the sink."""

from __future__ import annotations

import pytest

from bench.scenarios import pipes

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_ingest_of_a_file_stores_every_line_and_reports_rate_and_cpu(tmp_path):
    path = tmp_path / "calls.jsonl"
    pipes.write_jsonl(path, 300)
    assert len(path.read_bytes().splitlines()) == 300
    row = pipes.measure_ingest(path, 300, "sqlite", 100.0)
    assert not row["error"], row
    assert row["calls_distinct_at_sink"] == 300 and row["calls_lost"] == 0
    assert row["calls_per_s"] > 0 and row["client_cpu_us_per_call"] > 0


def test_relay_delivers_every_call_of_the_engine_client_to_the_sink():
    row = pipes.measure_relay(2000, "zstd", 100.0)
    assert not row["error"] and not row["timed_out"], row
    assert row["calls_received_at_sink"] == 2000 and row["calls_lost"] == 0
    assert row["calls_per_s"] > 0 and row["relay_cpu_us_per_call"] > 0
