"""Run items (many calls read as one record): cut in pieces when a server refuses a batch,
dead-lettered call by call, released once every piece is settled."""

from __future__ import annotations

import msgspec

from engine import ring
from engine.sender._batcher import Batch, Item, split_run
from engine.sender._release import ReleaseTracker
from engine.sender._router import Router

PROJECT = b"e/p"
_ROUTE = "/v2/e/p/calls/complete"


def _run_record(calls: int, end_pos: int = 100) -> ring.RunRecord:
    items = [b'{"id":"%d","n":%d}' % (n, n) for n in range(calls)]
    cuts, at = [], 0
    for n, item in enumerate(items):
        at += len(item) + (1 if n else 0)
        cuts.append(at.to_bytes(4, "little") + n.to_bytes(16, "big"))
    return ring.RunRecord(0, end_pos, ring.KIND_RUN, 0, (0).to_bytes(16, "big"), bytes(16),
                          PROJECT, b",".join(items), calls, 1, b"".join(cuts))


def _run_item(calls: int, ref: int = 7) -> Item:
    (item,) = Router("complete", 1 << 20).route([_run_record(calls)], [ref])
    return item


def _ids(batch: Batch) -> list[int]:
    return [c["n"] for c in msgspec.json.decode(batch.body())["batch"]]


def test_a_run_item_counts_its_calls_and_names_each_one():
    item = _run_item(5)
    assert (item.calls, item.route) == (5, _ROUTE)
    calls = list(item.each_call())
    assert [int.from_bytes(i, "big") for i, _ in calls] == [0, 1, 2, 3, 4]
    assert [msgspec.json.decode(data)["n"] for _, data in calls] == [0, 1, 2, 3, 4]
    assert len(Batch(_ROUTE, [item, _run_item(2)])) == 7


def test_a_run_cut_in_two_keeps_every_call_once_in_order():
    left, right = split_run(_run_item(7), 3)
    assert (left.calls, right.calls) == (3, 4)
    assert [msgspec.json.decode(d)["n"] for _, d in (*left.each_call(), *right.each_call())] == \
        list(range(7))
    assert int.from_bytes(right.call_id, "big") == 3
    assert left.refs == right.refs == (7,)


def test_halves_and_chunks_of_a_lone_run_keep_order_and_fit():
    batch = Batch(_ROUTE, [_run_item(9)])
    halves = batch.halves()
    assert [_ids(h) for h in halves] == [[0, 1, 2, 3], [4, 5, 6, 7, 8]]
    chunks = batch.chunks(60)
    assert [n for c in chunks for n in _ids(c)] == list(range(9))
    assert all(c.size_bytes <= 60 for c in chunks) and len(chunks) > 2


def test_a_split_record_is_released_once_every_piece_is_settled():
    released = []
    tracker = ReleaseTracker(lambda slot, pos: released.append(pos))
    (ref,) = tracker.track([_run_record(4, end_pos=100)])
    tracker.split(ref, 2)  # three pieces
    tracker.ack([ref])
    tracker.ack([ref])
    assert released == []
    tracker.ack([ref])
    assert released == [100] and tracker.pending() == 0
