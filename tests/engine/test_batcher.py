"""Routing, splicing, batching and contiguous release — no server, no shared memory."""

from __future__ import annotations

import msgspec

from engine import _ring
from engine._batcher import Accumulator, Batch, ReleaseTracker, Router, Token
from engine.wire import encode, end_splice_offset, utcnow, uuid7
from engine.wire.calls import CompletedCallSchemaForInsert, EndedCallSchemaForInsert
from engine.wire.calls import StartedCallSchemaForInsert as Start

PROJECT = b"e/p"


def _records(slot: int, pos: int, call_id: str | None = None):
    call_id = call_id or uuid7()
    start = encode(Start(project_id="e/p", id=call_id, op_name="op", trace_id=uuid7(),
                         started_at=utcnow(), attributes={}, inputs={"q": 1}))
    end = encode(EndedCallSchemaForInsert(project_id="e/p", id=call_id, ended_at=utcnow(),
                                          output=2, summary={}))
    raw = bytes.fromhex(call_id.replace("-", ""))
    s = _ring.Record(slot, pos + 100, _ring.KIND_START, 0, raw, bytes(16), PROJECT, start, 0, 1)
    e = _ring.Record(slot, pos + 200, _ring.KIND_END, 0, raw, bytes(16), PROJECT, end,
                     end_splice_offset(end), 2)
    return s, e


def test_release_is_contiguous_per_ring():
    released = []
    tracker = ReleaseTracker(lambda slot, pos: released.append((slot, pos)))
    a, b, c = (tracker.track(0, p) for p in (10, 20, 30))
    other = tracker.track(1, 5)
    tracker.ack([b])
    assert released == []  # a is still out: nothing behind it may be freed
    tracker.ack([a, other])
    assert sorted(released) == [(0, 20), (1, 5)]
    tracker.ack([c])
    assert released[-1] == (0, 30)
    assert tracker.pending() == 0


def test_complete_mode_pairs_a_start_with_its_end_in_either_order():
    router = Router("complete", 1 << 20)
    s, e = _records(0, 0)
    assert router.route(s, Token(0, s.end_pos)) is None
    item = router.route(e, Token(0, e.end_pos))
    call = msgspec.json.decode(item.data, type=CompletedCallSchemaForInsert)
    assert call.output == 2 and call.inputs == {"q": 1}
    assert item.route == "/v2/e/p/calls/complete" and not item.single
    s2, e2 = _records(0, 300)
    t_end, t_start = Token(0, e2.end_pos), Token(0, s2.end_pos)
    assert router.route(e2, t_end) is None
    late = router.route(s2, t_start)
    assert late.tokens == (t_start, t_end)
    assert late.data == s2.payload[:-1] + b"," + e2.payload[e2.aux:]


def test_upsert_mode_wraps_each_record_for_the_batch_route():
    router = Router("upsert", 1 << 20)
    s, e = _records(0, 0)
    start_item = router.route(s, Token(0, 1))
    end_item = router.route(e, Token(0, 2))
    body = Batch(start_item.route, [start_item, end_item]).body()
    decoded = msgspec.json.decode(body)
    assert [x["mode"] for x in decoded["batch"]] == ["start", "end"]
    assert decoded["batch"][1]["req"]["end"]["output"] == 2


def test_a_waiting_start_goes_alone_when_old_or_pinning_and_its_end_follows_alone():
    router = Router("complete", 1 << 20)
    s, e = _records(0, 0)
    router.route(s, Token(0, s.end_pos))
    assert router.expire(3600.0) == []
    assert router.expire(3600.0, {0: s.end_pos + 10}, pin_limit_bytes=5)[0].route.endswith(
        "/call/start")
    end_item = router.route(e, Token(0, e.end_pos))
    assert end_item.single and end_item.route.endswith("/call/end")
    assert msgspec.json.decode(end_item.data)["end"]["id"] == msgspec.json.decode(s.payload)["id"]


def test_a_pair_too_large_together_is_sent_as_two_single_requests():
    s, e = _records(0, 0)
    router = Router("complete", max(len(s.payload), len(e.payload)) + 1)
    router.route(s, Token(0, 1))
    first = router.route(e, Token(0, 2))
    assert first.route.endswith("/call/start")
    assert [i.route for i in router.extra] == ["/v2/e/p/call/end"]


def test_accumulator_cuts_batches_at_the_size_target():
    router = Router("upsert", 1 << 20)
    acc = Accumulator()
    items = [router.route(r, Token(0, i)) for i, r in enumerate(_records(0, 0) * 10)]
    target = 3 * len(items[0].data)
    full = [b for b in (acc.add(i, lambda: target) for i in items) if b is not None]
    rest = acc.due(0.0, everything=True)
    assert all(b.size_bytes <= target for b in full)
    assert sum(len(b) for b in full + rest) == len(items)
    assert acc.open_bytes == 0


def test_halves_keep_order_and_bodies_stay_valid_json():
    router = Router("upsert", 1 << 20)
    items = [router.route(r, Token(0, i)) for i, r in enumerate(_records(0, 0) * 3)]
    first, second = Batch(items[0].route, items).halves()
    assert first.items + second.items == items
    for half in (first, second):
        assert len(msgspec.json.decode(half.body())["batch"]) == len(half)


def test_chunks_respect_the_byte_limit_and_keep_order():
    router = Router("upsert", 1 << 20)
    items = [router.route(r, Token(0, i)) for i, r in enumerate(_records(0, 0) * 8)]
    batch = Batch(items[0].route, items)
    limit = batch.size_bytes // 5
    pieces = batch.chunks(limit)
    assert [i for p in pieces for i in p.items] == items
    assert all(p.size_bytes <= limit for p in pieces if len(p) > 1)
    assert len(batch.chunks(batch.size_bytes * 2)) == 2  # never fewer than halves
