"""Several sender processes for one engine (``senders``): the slots are shared out, each
call's start and end go through one sender in order, nothing is lost or sent twice, the
stats add up, a flush waits for every sender, and a dead sender is replaced."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from engine.common._config import MAX_SENDERS
from engine.ring import _layout
from tests.engine.helpers import PROJECT, make_engine, trace_structs
from tests.faultserver import FaultServer

pytestmark = pytest.mark.integration
_PRODUCERS, _CALLS = 4, 150


def _produce(tracer, queue, barrier) -> None:
    queue.put(trace_structs(tracer, _CALLS, prefix=f"p{os.getpid()}"))
    # every producer holds its slot until all have written, so the slots in use are
    # distinct and both senders have some to read (a producer that closes first would
    # hand its slot to the next one: all of them could land on one sender's slot)
    barrier.wait(timeout=60)
    tracer.close()


def _run_producers(eng) -> list[str]:
    ctx = multiprocessing.get_context("fork")
    queue, barrier = ctx.Queue(), ctx.Barrier(_PRODUCERS)
    procs = [ctx.Process(target=_produce, args=(eng.producer(), queue, barrier))
             for _ in range(_PRODUCERS)]
    for p in procs:
        p.start()
    ids = [call_id for _ in procs for call_id in queue.get(timeout=60)]
    for p in procs:
        p.join(30)
    return ids


@pytest.mark.parametrize("target", ["complete", "upsert"])
def test_two_senders_deliver_every_call_once_with_its_start_first(tmp_path, target):
    with FaultServer() as server, make_engine(server.url, tmp_path, senders=2,
                                              target=target) as eng:
        ids = _run_producers(eng)
        assert eng.flush(timeout_s=60)
        stored = server.stored_ids(PROJECT)  # what the flush waited for is all there
        stats = eng.stats()
        arrivals = list(server.arrivals)
        assert server.duplicate_deliveries() == 0
    assert stored == set(ids) and len(ids) == _PRODUCERS * _CALLS
    pids = stats["sender_pids"]
    assert len(pids) == 2 and all(pids) and len(set(pids)) == 2
    items = len(ids) * (2 if target == "upsert" else 1)
    assert stats["items_acked"] == items and stats["dead_letters"] == 0
    written = [s for s in stats["ring"]["slots"] if s["records_written"]]
    assert {s["slot"] % 2 for s in written} == {0, 1}  # both senders had slots to read
    if target == "upsert":
        first = {}
        for kind, call_id in arrivals:
            first.setdefault(call_id, kind)
        assert set(first.values()) == {"start"}


def test_a_killed_sender_is_replaced_and_its_slots_delivered(tmp_path):
    with FaultServer() as server, make_engine(server.url, tmp_path, senders=2) as eng:
        first = _run_producers(eng)
        assert eng.flush(timeout_s=60)
        before = _records_by_slot(eng.stats())
        eng._senders[1].kill()
        more = _run_producers(eng)
        assert eng.flush(timeout_s=60)
        stats = eng.stats()
        assert server.stored_ids(PROJECT) == set(first + more)
    after = _records_by_slot(stats)
    # calls went into the killed sender's slots after it died (and were delivered above)
    assert any(after[slot] > before.get(slot, 0) for slot in after if slot % 2 == 1)
    assert stats["sender_restarts"] >= 1


def _records_by_slot(stats: dict) -> dict[int, int]:
    return {s["slot"]: s["records_written"] for s in stats["ring"]["slots"]}


def test_the_ring_has_a_sleeping_flag_for_each_sender_config_allows():
    assert _layout.MAX_SENDERS == MAX_SENDERS
