"""The matrix scenario's pieces: the decoding sink, the ISO-timestamp drivers, the CPU split."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
import zstandard

from bench import harness
from bench.scenarios import matrix
from engine.wire._codec import encode, utcnow, uuid7
from engine.wire.calls import CompletedCallSchemaForInsert

pytestmark = [pytest.mark.integration]


def _post(url: str, body: bytes, encoding: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if encoding:
        headers["Content-Encoding"] = encoding
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def _complete_call(i: int) -> CompletedCallSchemaForInsert:
    now = utcnow()
    return CompletedCallSchemaForInsert(
        project_id=harness.PROJECT, id=uuid7(), trace_id=uuid7(), op_name="op", started_at=now,
        ended_at=now, attributes={}, inputs={"i": i, "nested": [{"a": 1.5}]}, summary={})


def test_decode_sink_decodes_zstd_bodies_and_counts_their_calls() -> None:
    with harness.sink("decode") as s:
        body = encode({"batch": [_complete_call(i) for i in range(3)]})
        status, _ = _post(s.url + "/v2/bench-entity/bench-project/calls/complete",
                          zstandard.ZstdCompressor().compress(body), "zstd")
        assert status == 200
        stats = s.stats()
        assert (stats["calls_complete"], stats["body_bytes"]) == (3, len(body))
        assert s.calls_received() == 3
        assert s.cpu_s() > 0


def test_decode_sink_refuses_what_it_cannot_decode() -> None:
    with harness.sink("decode") as s:
        route = s.url + "/v2/bench-entity/bench-project/calls/complete"
        status, reply = _post(route, b'{"batch": [{"id": 1}]}')
        assert status == 422 and "batch" in reply["reason"]
        status, reply = _post(route, b"{not json")
        assert status == 400
        assert s.stats()["rejected_requests"] == 2 and s.calls_received() == 0


@pytest.mark.slow
def test_engine_dicts_with_iso_timestamps_arrive_whole_with_each_process_cpu() -> None:
    # enough calls that each process spends several 10 ms clock ticks of /proc/PID/stat
    row = matrix.measure("engine", "dicts-iso", "zstd", "decode", 8000, 60.0)
    assert not row["error"] and not row["timed_out"], row
    assert row["calls_enqueued"] == row["calls_received_at_sink"] == 8000
    assert row["calls_lost"] == 0
    for name in ("producer_cpu_us_per_call", "driver_cpu_us_per_call",
                 "sender_cpu_us_per_call", "sink_cpu_us_per_call"):
        assert row[name] > 0, name
    assert row["driver_cpu_us_per_call"] < row["producer_cpu_us_per_call"]
    assert row["wire_reduction_x"] > 1


@pytest.mark.slow
@pytest.mark.peers
def test_weave_batched_with_iso_timestamps_is_stored_exactly() -> None:
    row = matrix.measure("weave-batched", "dicts-iso", "none", "sqlite", 40, 60.0)
    assert not row["error"] and not row["timed_out"], row
    assert row["calls_enqueued"] == row["calls_distinct_at_sink"] == 40
    assert row["producer_cpu_us_per_call"] > 0 and row["sender_cpu_us_per_call"] > 0


def test_plan_runs_weave_once_per_payload_and_sink() -> None:
    from bench._run import QUICK

    cells = matrix.plan(QUICK.scaled(1.0, ("engine", "weave-batched")))
    engine = [c for c in cells if c[0] == "engine"]
    weave = [c for c in cells if c[0] == "weave-batched"]
    assert len(engine) == len(matrix.PAYLOADS) * len(matrix.COMPRESSIONS) * len(harness.SINKS)
    assert len(weave) == len(set(weave)) == len(matrix.PAYLOADS) * len(harness.SINKS)
