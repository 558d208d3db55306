"""Calls side by side in a ring travel as runs (one record for many calls, C reader): a
server that refuses their batches still gets every call once, a call it rejects is
dead-lettered alone, and a flush waits for every piece of a cut run.

The calls are written before the sender starts, so its first reads find them side by side
and make runs of them (as a sender that is behind does)."""

from __future__ import annotations

import json

import pytest

from engine.native import _accel
from engine.wire import EndedCallSchemaForInsert, StartedCallSchemaForInsert, utcnow, uuid7
from tests.engine.helpers import PROJECT, make_engine
from tests.faultserver import FaultServer

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(_accel.native is None, reason="runs are read by the C reader")]


def _write_calls(tracer, ids: list[str], payload_bytes: int) -> None:
    for call_id in ids:
        started_at = utcnow()
        tracer.call_start(StartedCallSchemaForInsert(
            project_id=PROJECT, id=call_id, trace_id=uuid7(), op_name="op",
            started_at=started_at, attributes={}, inputs={"text": "x" * payload_bytes}))
        tracer.call_end(EndedCallSchemaForInsert(
            project_id=PROJECT, id=call_id, ended_at=utcnow(), output=1, summary={}))


def _deliver(server, tmp_path, ids: list[str], payload_bytes: int = 200) -> tuple[bool, dict]:
    """(flush's answer: True only if the server took every call, the stats)."""
    with make_engine(server.url, tmp_path, target="complete", start_sender=False) as eng:
        _write_calls(eng.producer(), ids, payload_bytes)
        eng._sender_args = eng._write_sender_args()  # a sender, started now
        eng._start_sender()
        return eng.flush(timeout_s=60), eng.stats()


def test_runs_cut_by_413s_deliver_every_call_once(tmp_path):
    ids = [uuid7() for _ in range(300)]
    with FaultServer(limit_bytes=24 << 10) as server:  # a few calls per body
        delivered, stats = _deliver(server, tmp_path, ids, payload_bytes=1500)
        assert delivered and server.stored_ids(PROJECT) == set(ids)
        assert server.duplicate_deliveries() == 0
    assert stats["splits_413"] >= 1 and stats["dead_letters"] == 0
    assert stats["items_acked"] == 300


def test_a_call_rejected_inside_a_run_is_dead_lettered_alone(tmp_path):
    ids = [uuid7() for _ in range(60)]
    with FaultServer(reject_ids=[ids[31]]) as server:
        delivered, stats = _deliver(server, tmp_path, ids)
        assert not delivered  # settled, one call dead-lettered
        assert server.stored_ids(PROJECT) == set(ids) - {ids[31]}
    assert stats["dead_letters"] == stats["dead_invalid"] == 1
    (line,) = (tmp_path / "dead_letters.jsonl").read_text().splitlines()
    letter = json.loads(line)
    assert letter["call_id"] == letter["item"]["id"] == ids[31]
