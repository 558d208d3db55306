"""The distant scenario: a decoding sink that answers late, and one run of it."""

from __future__ import annotations

import time

import pytest

from bench import harness
from bench.scenarios import distant
from engine.wire._codec import encode
from tests.bench.test_matrix import _complete_call, _post

pytestmark = [pytest.mark.integration]


def test_the_decode_sink_answers_ingest_requests_late_and_the_rest_at_once() -> None:
    with harness.sink("decode", latency_ms=300) as s:
        body = encode({"batch": [_complete_call(i) for i in range(2)]})
        started = time.monotonic()
        status, _ = _post(s.url + "/v2/bench-entity/bench-project/calls/complete", body)
        late_s = time.monotonic() - started
        assert status == 200 and s.calls_received() == 2
        started = time.monotonic()
        s.stats()
        assert late_s >= 0.3 > time.monotonic() - started
    with pytest.raises(ValueError, match="decode sink"), harness.sink("count", latency_ms=100):
        pass


def test_one_distant_run_delivers_every_call_and_says_what_each_process_paid() -> None:
    row = distant.measure("engine", 2, 3_000, 60)
    assert row["scenario"] == "distant" and row["latency_ms"] == distant.LATENCY_MS
    assert row["calls_enqueued"] == 3_000 and row["calls_lost"] == 0, row
    assert row["calls_per_s"] > 0 and row["wire_reduction_x"] > 1  # zstd on
    assert all(row[k] > 0 for k in ("producer_cpu_us_per_call", "sender_cpu_us_per_call",
                                    "sink_cpu_us_per_call"))
    assert "| engine | 2 | zstd |" in distant.section([row])[2]
