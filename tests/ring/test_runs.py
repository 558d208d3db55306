"""Runs: complete calls side by side in a ring, read by the C reader as one RunRecord, and
delivered by the sender exactly as the calls read one by one would be."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import ring
from engine.native import _accel
from engine.ring import KIND_COMPLETE, KIND_END, KIND_START, RingSet, _reader
from engine.sender._release import ReleaseTracker
from engine.sender._router import Router

PROJECT, OTHER = b"entity/project", b"entity/other"
TRACE_ID = bytes(range(16, 32))
RING_BYTES = 1 << 20
_CALL = struct.Struct("<I16s")

pytestmark = pytest.mark.skipif(_accel.native is None, reason="runs are read by the C reader")


def _id(n: int) -> bytes:
    return n.to_bytes(16, "big")


def _start(n: int, pad: int = 0) -> bytes:
    return b'{"id":"%d","inputs":{"x":"%s"}}' % (n, b"s" * pad)


def _end(n: int, pad: int = 0) -> tuple[bytes, int]:
    end = b'{"id":"%d","ended_at":"t","output":"%s"}' % (n, b"e" * pad)
    return end, end.index(b'"ended_at"')


def _spliced(n: int, pad: int = 0) -> bytes:
    end, aux = _end(n, pad)
    return _start(n, pad)[:-1] + b"," + end[aux:]


def _write_pair(writer, n: int, pad: int = 0, project: bytes = PROJECT) -> None:
    end, aux = _end(n, pad)
    assert writer.try_write(KIND_START, 0, _id(n), TRACE_ID, project, _start(n, pad), 0)
    assert writer.try_write(KIND_END, 1, _id(n), TRACE_ID, project, end, aux)


@pytest.fixture
def rings():
    made = RingSet.create(RING_BYTES, 2)
    yield made
    made.close()
    made.unlink()


def _reader_for(rings, run_max: int):
    reader = rings.reader()
    reader.splice_max_bytes = 1 << 20
    reader.run_max_bytes = run_max
    return reader


def _calls(record) -> list[tuple[int, bytes]]:
    return list(_CALL.iter_unpack(record.calls))


def test_adjacent_complete_calls_are_read_as_one_run(rings):
    writer, reader = rings.writer(), _reader_for(rings, 1 << 20)
    for n in range(5):
        _write_pair(writer, n)
    complete = b'{"id":"9","ended_at":"t"}'
    assert writer.try_write(KIND_COMPLETE, 0, _id(9), TRACE_ID, PROJECT, complete, 0)
    (run,) = reader.read()
    items = [_spliced(n) for n in range(5)] + [complete]
    assert (run.kind, run.aux, run.project) == (ring.KIND_RUN, 6, PROJECT)
    assert run.payload == b",".join(items)
    assert (run.call_id, run.trace_id) == (_id(0), TRACE_ID)
    offsets = [len(b",".join(items[:k + 1])) for k in range(6)]
    assert _calls(run) == list(zip(offsets, [_id(n) for n in (0, 1, 2, 3, 4, 9)]))
    assert reader.last_read_records == 11
    assert run.end_pos == rings.positions()[0][0]  # the head: all eleven records
    reader.release(0, run.end_pos)
    assert rings.counters()["records_released"] == 11


def test_a_run_ends_at_its_byte_limit_at_another_project_and_at_an_unpaired_record(rings):
    one = len(_spliced(0, 50))
    writer, reader = rings.writer(), _reader_for(rings, 3 * one + 2)  # three calls fit
    for n in range(5):  # a run of three, then one of two
        _write_pair(writer, n, 50)
    _write_pair(writer, 5, 50, project=OTHER)  # another project: alone (spliced)
    assert writer.try_write(KIND_START, 0, _id(6), TRACE_ID, PROJECT, _start(6), 0)  # no end
    _write_pair(writer, 7, 50)
    records = reader.read()
    assert [(r.kind, r.aux if r.kind == ring.KIND_RUN else None) for r in records] == [
        (ring.KIND_RUN, 3), (ring.KIND_RUN, 2), (ring.KIND_SPLICED, None),
        (KIND_START, None), (ring.KIND_SPLICED, None)]
    assert all(len(r.payload) <= 3 * one + 2 for r in records)
    assert records[2].project == OTHER


def test_without_run_bytes_every_call_is_read_on_its_own(rings):
    writer, reader = rings.writer(), _reader_for(rings, 0)
    for n in range(3):
        _write_pair(writer, n)
    assert [r.kind for r in reader.read()] == [ring.KIND_SPLICED] * 3


_OPS = st.lists(st.tuples(st.sampled_from(["pair", "complete", "lone start", "lone end",
                                           "other project"]),
                          st.integers(0, 300)), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(ops=_OPS, run_max=st.integers(0, 4000))
def test_calls_leave_the_router_the_same_with_runs_or_one_by_one(ops, run_max):
    """Whatever the mix (pairs, complete records, halves without partner, other projects)
    and the run limit: each call's JSON and how its records are released are the same as
    when the pure-Python reader hands over every record alone."""
    rings = RingSet.create(RING_BYTES, 1)
    try:
        writer = rings.writer()
        for n, (op, pad) in enumerate(ops):
            if op in ("pair", "other project"):
                _write_pair(writer, n, pad, OTHER if op == "other project" else PROJECT)
            elif op == "complete":
                body = b'{"id":"%d","ended_at":"t","x":"%s"}' % (n, b"c" * pad)
                assert writer.try_write(KIND_COMPLETE, 0, _id(n), TRACE_ID, PROJECT, body, 0)
            elif op == "lone start":
                assert writer.try_write(KIND_START, 0, _id(n), TRACE_ID, PROJECT, _start(n), 0)
            else:
                end, aux = _end(n)
                assert writer.try_write(KIND_END, 1, _id(n), TRACE_ID, PROJECT, end, aux)
        delivered = {}
        for native in (_accel.native, None):
            reader = _reader_for(rings, run_max)
            reader.rewind()
            _reader._native = native  # the module's parser: C with runs, or Python
            try:
                delivered[native is None] = _route_all(reader)
            finally:
                _reader._native = _accel.native
        assert delivered[False] == delivered[True]
    finally:
        rings.close()
        rings.unlink()


def _route_all(reader) -> tuple[list, int]:
    """(every call's (id, JSON) as the router delivers it, the position released to)."""
    released = []
    tracker = ReleaseTracker(lambda slot, pos: released.append(pos))
    router = Router("complete", 1 << 20)
    items = []
    while records := reader.read():
        items += router.route(records, tracker.track(records))
    items += router.expire(0.0, everything=True)
    calls = sorted(call for item in items for call in item.each_call())
    tracker.ack(ref for item in items for ref in item.refs)
    return calls, max(released, default=0)
