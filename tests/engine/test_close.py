"""After close(): the engine's own Closed error, and a ring set that still holds records
is kept for recovery instead of being removed."""

from __future__ import annotations

import os

import pytest

import engine
from engine.ring import _files as ring_files
from tests.engine.helpers import PROJECT, make_engine, trace_calls
from tests.faultserver import FaultServer
from tests.pipeline import poll_until


def test_flush_and_producer_after_close_raise_closed():
    eng = engine.Engine(url="http://127.0.0.1:9", project=PROJECT, start_sender=False)
    eng.close()
    for after_close in (eng.flush, eng.producer):
        with pytest.raises(engine.Closed) as raised:
            after_close()
        assert not isinstance(raised.value, ValueError)
    assert eng.close() == eng.stats()  # closing again returns the final stats


@pytest.mark.integration
def test_close_keeps_a_ring_set_holding_records_it_could_not_persist(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with FaultServer() as server:
        server.down()
        eng = make_engine(server.url, tmp_path, shutdown_timeout_s=1.0,
                          dead_letter_path=str(blocker / "sub" / "dead.jsonl"))
        segment = ring_files.spec_segment_path(eng.spec)
        ids = trace_calls(eng.producer(), 20)
        stats = eng.close()
        assert stats["undelivered"] == 2 * len(ids)  # a start and an end per call, unreleased
        assert stats["unpersisted_unwritable"] > 0
        assert os.path.exists(segment)  # kept: the next engine for this URL recovers it
        server.up()
        with make_engine(server.url, tmp_path) as nxt:
            assert nxt.stats()["orphans_adopted"] == 1
            assert server.wait_for(lambda: server.stored_ids(PROJECT) == set(ids), timeout_s=30), (
                len(server.stored_ids(PROJECT)), len(set(ids)), server.stored_ids() - set(ids))
    assert poll_until(lambda: not os.path.exists(segment), timeout_s=30)
