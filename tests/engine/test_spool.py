"""Durable delivery: batches past their deadline are spooled and replayed, even by a new engine."""

from __future__ import annotations

import pytest

from engine.sender._spool import Spool
from tests.engine.helpers import PROJECT, make_engine, trace_calls
from tests.faultserver import FaultServer
from tests.pipeline import poll_until

pytestmark = pytest.mark.integration


def test_batches_past_their_deadline_are_spooled_and_replayed_when_the_server_returns(tmp_path):
    spool_dir = tmp_path / "spool"
    with FaultServer() as server, make_engine(server.url, tmp_path, spool_dir=str(spool_dir),
                                              delivery_deadline_s=0.3) as eng:
        server.down()
        ids = trace_calls(eng.producer(), 40)
        assert not eng.flush(timeout_s=30)  # spooled is not delivered
        assert eng.stats()["spooled_items"] > 0
        assert eng.flush(timeout_s=30)  # released once spooled: the ring is free again
        assert Spool(spool_dir).count_pending > 0
        server.up()
        assert server.wait_for(lambda: server.stored_ids(PROJECT) == set(ids), timeout_s=30)
        # the server may hold the last segment's calls before the sender reads its answer
        # and deletes the segment (closing then keeps it, to be sent again: seen under load)
        assert poll_until(lambda: Spool(spool_dir).count_pending == 0, timeout_s=30)
    assert Spool(spool_dir).count_pending == 0


def test_a_new_engine_replays_what_an_earlier_one_spooled(tmp_path):
    spool_dir = tmp_path / "spool"
    with FaultServer() as server:
        server.down()
        with make_engine(server.url, tmp_path, spool_dir=str(spool_dir), delivery_deadline_s=0.3,
                         shutdown_timeout_s=2) as eng:
            ids = trace_calls(eng.producer(), 30)
            eng.flush(timeout_s=30)
        assert Spool(spool_dir).count_pending > 0
        assert not server.stored_ids(PROJECT)
        server.up()
        with make_engine(server.url, tmp_path, spool_dir=str(spool_dir)):
            assert server.wait_for(lambda: server.stored_ids(PROJECT) == set(ids), timeout_s=30)
