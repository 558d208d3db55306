"""Routing, splicing, batching and contiguous release — no server, no shared memory."""

from __future__ import annotations

import random

import msgspec

from engine import ring
from engine.sender._batcher import Accumulator, Batch
from engine.sender._release import ReleaseTracker
from engine.sender._router import Router
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
    s = ring.Record(slot, pos + 100, ring.KIND_START, 0, raw, bytes(16), PROJECT, start, 0, 1)
    e = ring.Record(slot, pos + 200, ring.KIND_END, 0, raw, bytes(16), PROJECT, end,
                     end_splice_offset(end), 2)
    return s, e


def _at(slot: int, end_pos: int) -> ring.Record:
    """A record that only says where it ends (what the tracker looks at)."""
    return ring.Record(slot, end_pos, ring.KIND_RAW, 0, bytes(16), bytes(16), PROJECT, b"{}", 0, 0)


def _route_one(router: Router, record: ring.Record, ref: int):
    items = router.route([record], [ref])
    assert len(items) <= 1
    return items[0] if items else None


def test_release_is_contiguous_per_ring():
    released = []
    tracker = ReleaseTracker(lambda slot, pos: released.append((slot, pos)))
    a, b, c, other = tracker.track([_at(0, 10), _at(0, 20), _at(0, 30), _at(1, 5)])
    tracker.ack([b])
    assert released == []  # a is still out: nothing behind it may be freed
    tracker.ack([a, other])
    assert sorted(released) == [(0, 20), (1, 5)]
    tracker.ack([c])
    assert released[-1] == (0, 30)
    assert tracker.pending() == 0


def test_release_follows_the_read_order_whatever_order_the_acks_come_in():
    rng = random.Random(7)
    released: dict[int, list[int]] = {0: [], 1: [], 2: []}
    tracker = ReleaseTracker(lambda slot, pos: released[slot].append(pos))
    records = [_at(slot, 8 * (n + 1)) for n in range(40) for slot in (0, 1, 2)]
    refs = []
    for first in range(0, len(records), 17):  # several reads, rings interleaved in each
        refs += tracker.track(records[first:first + 17])
    settled: set[int] = set()
    order = list(range(len(records)))
    rng.shuffle(order)
    for group in range(0, len(order), 5):
        acked = order[group:group + 5]
        tracker.ack([refs[i] for i in acked])
        settled.update(acked)
        for slot, positions in released.items():
            mine = [i for i, r in enumerate(records) if r.slot == slot]
            prefix = 0
            while prefix < len(mine) and mine[prefix] in settled:
                prefix += 1
            expected = records[mine[prefix - 1]].end_pos if prefix else None
            assert (positions[-1] if positions else None) == expected
            assert positions == sorted(positions)
    assert tracker.pending() == 0
    assert tracker.read_pos == {0: 320, 1: 320, 2: 320}


def test_an_ack_repeated_after_release_frees_nothing_more():
    released = []
    tracker = ReleaseTracker(lambda slot, pos: released.append((slot, pos)))
    a, b, c = tracker.track([_at(0, 10), _at(0, 20), _at(0, 30)])
    tracker.ack([a])
    tracker.ack([a])  # released already: must not stand in for b or c
    assert released == [(0, 10)]
    tracker.ack([c])
    assert released == [(0, 10)]
    tracker.ack([b])
    assert released == [(0, 10), (0, 30)]


def test_refs_of_a_forgotten_slot_never_name_its_next_producers_records():
    released = []
    tracker = ReleaseTracker(lambda slot, pos: released.append((slot, pos)))
    (old,) = tracker.track([_at(3, 10)])
    tracker.ack([old])
    tracker.forget_slot(3)  # reaped: the slot's next producer starts afresh
    first, second = tracker.track([_at(3, 50), _at(3, 60)])
    tracker.ack([old, second])
    assert released == [(3, 10)]
    tracker.ack([first])
    assert released == [(3, 10), (3, 60)]


def test_complete_mode_pairs_a_start_with_its_end_in_either_order():
    router = Router("complete", 1 << 20)
    tracker = ReleaseTracker(lambda slot, pos: None)
    s, e = _records(0, 0)
    s_ref, e_ref = tracker.track([s, e])
    assert _route_one(router, s, s_ref) is None
    item = _route_one(router, e, e_ref)
    call = msgspec.json.decode(item.data, type=CompletedCallSchemaForInsert)
    assert call.output == 2 and call.inputs == {"q": 1}
    assert item.route == "/v2/e/p/calls/complete" and not item.single
    assert item.size == len(item.data)
    s2, e2 = _records(0, 300)
    t_end, t_start = tracker.track([e2, s2])
    assert _route_one(router, e2, t_end) is None
    late = _route_one(router, s2, t_start)
    assert late.refs == (t_start, t_end)
    assert late.data == s2.payload[:-1] + b"," + e2.payload[e2.aux:]


def test_a_read_pairs_inside_itself_and_keeps_the_read_order():
    router = Router("complete", 1 << 20)
    tracker = ReleaseTracker(lambda slot, pos: None)
    (s1, e1), (s2, e2) = _records(0, 0), _records(1, 0)
    records = [s1, s2, e2, e1]  # nested: the second call ends first
    items = router.route(records, tracker.track(records))
    assert [i.call_id for i in items] == [s2.call_id, s1.call_id]
    assert router.held() == 0 and router.spliced == 2


def test_upsert_mode_wraps_each_record_for_the_batch_route():
    router = Router("upsert", 1 << 20)
    s, e = _records(0, 0)
    start_item, end_item = router.route([s, e], [1, 2])
    body = Batch(start_item.route, [start_item, end_item]).body()
    decoded = msgspec.json.decode(body)
    assert [x["mode"] for x in decoded["batch"]] == ["start", "end"]
    assert decoded["batch"][1]["req"]["end"]["output"] == 2
    assert len(body) == Batch(start_item.route, [start_item, end_item]).size_bytes - 1


def test_a_record_of_an_unknown_kind_is_handed_back_not_routed():
    router = Router("complete", 1 << 20)
    s, e = _records(0, 0)
    odd = s._replace(kind=99)
    items = router.route([odd, s, e], [1, 2, 3])
    assert len(items) == 1 and items[0].refs == (2, 3)
    ((record, ref, detail),) = router.unroutable
    assert record is odd and ref == 1 and "kind 99" in detail


def test_starts_that_go_alone_for_pinning_their_ring_are_counted_apart_from_old_ones():
    """``pinned_alone`` counts the v2 starts a larger ring would have kept paired (the
    sender's pressure warning names them): not a start gone for its age, not one that
    goes in an upsert batch (cheap: many per request)."""
    router = Router("complete", 1 << 20)
    _route_one(router, _records(0, 0)[0], 1)
    [aged] = router.expire(0.0, {0: 10_000}, pin_limit_bytes=5)  # old: it goes for that
    assert aged.single and router.pinned_alone == 0
    _route_one(router, _records(0, 2000)[0], 2)
    [pinned] = router.expire(3600.0, {0: 10_000}, pin_limit_bytes=5)
    assert pinned.single and router.eager_starts == 2 and router.pinned_alone == 1
    batched = Router("complete", 1 << 20, alone_batched=True)
    _route_one(batched, _records(0, 0)[0], 1)
    [upsert_item] = batched.expire(3600.0, {0: 10_000}, pin_limit_bytes=5)
    assert not upsert_item.single and batched.pinned_alone == 0


def test_a_waiting_start_goes_alone_when_old_or_pinning_and_its_end_follows_alone():
    router = Router("complete", 1 << 20)
    s, e = _records(0, 0)
    _route_one(router, s, 1)
    assert router.expire(3600.0) == []
    [start_item] = router.expire(3600.0, {0: s.end_pos + 10}, pin_limit_bytes=5)
    assert start_item.route.endswith("/call/start")
    # its end waits for the start's request to be settled: weave's server answers an end
    # whose start it has not stored 404, and two requests in flight arrive in any order
    assert router.route([e], [2]) == [] and router.held() == 1
    [end_item] = router.start_settled([start_item])
    assert router.held() == 0 and router.start_settled([start_item]) == []
    assert end_item.single and end_item.route.endswith("/call/end")
    assert msgspec.json.decode(end_item.data)["end"]["id"] == msgspec.json.decode(s.payload)["id"]
    assert Batch(end_item.route, [end_item]).body() == end_item.data  # no envelope


def test_a_lap_end_skipped_as_padding_does_not_count_as_read_after_a_waiting_start():
    """Small records fill a lap's first half; its second is skipped when the lap ends. A
    start read just before a lap's end, with little read after it in the next lap, pins
    little: it keeps waiting. Counted in positions, it went alone at every lap's end."""
    lap, pin = 2 << 20, 512 << 10
    s, _e = _records(0, 0)
    near_end = s._replace(end_pos=lap // 2 - 100)
    router = Router("complete", 1 << 20)
    _route_one(router, near_end, 1)
    just_past = {0: lap + 1000}  # 1,100 bytes of records after it, and the padding
    assert router.expire(3600.0, just_past, pin_limit_bytes=pin, lap_bytes=lap) == []
    before = Router("complete", 1 << 20)
    _route_one(before, near_end, 1)
    assert before.expire(3600.0, just_past, pin_limit_bytes=pin) != []  # as it went before
    # the producer's room (up to the start's place in the next lap) is down to what a start
    # as much read after it in its own lap leaves: half a lap less pin_limit_bytes
    far_past = {0: near_end.end_pos + lap // 2 + pin}
    for read_after, goes in ((far_past[0], 0), (far_past[0] + 1, 1)):
        router = Router("complete", 1 << 20)
        _route_one(router, near_end, 1)
        went = router.expire(3600.0, {0: read_after}, pin_limit_bytes=pin, lap_bytes=lap)
        assert len(went) == goes
    router = Router("complete", 1 << 20)
    _route_one(router, near_end, 1)  # in its own lap the limit is pin_limit_bytes, as before
    same_lap = {0: near_end.end_pos + pin + 1}
    assert len(router.expire(3600.0, same_lap, pin_limit_bytes=pin, lap_bytes=lap)) == 1


def test_the_look_for_pinning_records_waits_for_a_sixteenth_of_the_limit_to_be_read():
    """A look goes through every waiting record: with thousands waiting, one per read cost
    most of the sender's time. Old ones are still found at every read (read order)."""
    pin = 16 << 10
    router = Router("complete", 1 << 20)
    first, _ = _records(0, 0)
    _route_one(router, first, 1)
    looked = first.end_pos + pin - 500
    assert router.expire(3600.0, {0: looked}, pin_limit_bytes=pin) == []  # not pinning yet
    pinning = {0: first.end_pos + pin + 1}  # read on by 501 bytes only since that look
    assert router.expire(3600.0, pinning, pin_limit_bytes=pin) == []
    (went,) = router.expire(3600.0, {0: looked + pin // 16}, pin_limit_bytes=pin)
    assert went.refs == (1,)
    second, _ = _records(0, 0)
    _route_one(router, second, 2)
    (old,) = router.expire(0.0, {0: looked + pin // 16 + 1}, pin_limit_bytes=pin)
    assert old.refs == (2,)  # old enough goes at any read


def test_a_start_that_goes_alone_and_its_end_are_upsert_items_where_the_server_takes_them():
    router = Router("complete", 1 << 20, alone_batched=True)
    s, e = _records(0, 0)
    _route_one(router, s, 1)
    (start_item,) = router.expire(0.0, everything=True)
    end_item = _route_one(router, e, 2)
    assert start_item.route == end_item.route == "/call/upsert_batch"
    assert not start_item.single and not end_item.single
    decoded = msgspec.json.decode(Batch(start_item.route, [start_item, end_item]).body())
    assert [x["mode"] for x in decoded["batch"]] == ["start", "end"]
    assert decoded["batch"][0]["req"]["start"] == msgspec.json.decode(s.payload)
    assert decoded["batch"][1]["req"]["end"] == msgspec.json.decode(e.payload)
    assert router.eager_starts == 1


def test_a_pair_too_large_together_is_sent_as_two_single_requests():
    s, e = _records(0, 0)
    router = Router("complete", max(len(s.payload), len(e.payload)) + 1)
    _route_one(router, s, 1)
    [first] = router.route([e], [2])  # the end waits for its start's request
    assert first.route.endswith("/call/start") and first.refs == (1,)
    [second] = router.start_settled([first])
    assert second.route == "/v2/e/p/call/end" and second.refs == (2,)


def test_ends_waiting_for_their_starts_all_go_at_the_exit_after_them():
    s, e = _records(0, 0)
    router = Router("complete", max(len(s.payload), len(e.payload)) + 1)
    _route_one(router, s, 1)
    [start] = router.route([e], [2])
    [end] = router.ends_waiting()
    assert end.refs == (2,) and router.held() == 0 and router.start_settled([start]) == []


def test_accumulator_cuts_batches_at_the_size_target():
    router = Router("upsert", 1 << 20)
    acc = Accumulator()
    records = _records(0, 0) * 10
    items = router.route(records, list(range(len(records))))
    target = 3 * items[0].size
    full = acc.add(items[:7], lambda: target) + acc.add(items[7:], lambda: target)
    rest = acc.due(0.0, everything=True)
    assert all(b.size_bytes <= target for b in full)
    assert [i for b in full + rest for i in b.items] == items
    assert acc.open_bytes == 0


def test_accumulator_sends_single_items_alone_in_their_place():
    s, e = _records(0, 0)
    router = Router("complete", 1 << 20)
    _route_one(router, s, 1)
    (alone,) = router.expire(0.0, everything=True)
    upserts = Router("upsert", 1 << 20).route([s, e], [2, 3])
    acc = Accumulator()
    full = acc.add([upserts[0], alone, upserts[1]], lambda: 1 << 20)
    assert [b.items for b in full] == [[alone]]
    assert acc.due(0.0, everything=True)[0].items == upserts


def test_halves_keep_order_and_bodies_stay_valid_json():
    router = Router("upsert", 1 << 20)
    records = _records(0, 0) * 3
    items = router.route(records, list(range(len(records))))
    first, second = Batch(items[0].route, items).halves()
    assert first.items + second.items == items
    for half in (first, second):
        assert len(msgspec.json.decode(half.body())["batch"]) == len(half)


def test_chunks_respect_the_byte_limit_and_keep_order():
    router = Router("upsert", 1 << 20)
    records = _records(0, 0) * 8
    items = router.route(records, list(range(len(records))))
    batch = Batch(items[0].route, items)
    limit = batch.size_bytes // 5
    pieces = batch.chunks(limit)
    assert [i for p in pieces for i in p.items] == items
    assert all(p.size_bytes <= limit for p in pieces if len(p) > 1)
    assert len(batch.chunks(batch.size_bytes * 2)) == 2  # never fewer than halves


def test_a_complete_mode_body_is_the_spliced_calls_and_settles_every_record():
    router = Router("complete", 1 << 20)
    tracker = ReleaseTracker(lambda slot, pos: None)
    records = [r for n in range(5) for r in _records(n % 2, 1000 * n)]
    items = router.route(records, tracker.track(records))
    batch = Batch(items[0].route, items)
    body = batch.body()
    calls = msgspec.json.decode(body, type=dict[str, list[CompletedCallSchemaForInsert]])["batch"]
    assert [c.id for c in calls] == [msgspec.json.decode(r.payload)["id"] for r in records[::2]]
    assert len(body) == batch.size_bytes - 1  # size_bytes counts a separator after each item
    tracker.ack(batch.refs())
    assert tracker.pending() == 0
