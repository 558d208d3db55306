"""The shared-memory ring set in one process: framing, wrap-around, release, slots, doorbell."""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import re
import select
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import ring
from engine.native import _accel
from engine.ring import (
    HEADER_BYTES,
    KIND_COMPLETE,
    KIND_END,
    KIND_START,
    MAX_PROJECT_BYTES,
    RingSet,
    _reader,
    _set,
    record_bytes,
)
from engine.ring import _files as ring_files

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RING_BYTES = 4096
PROJECT = b"entity/project"
CALL_ID = bytes(range(16))
TRACE_ID = bytes(range(16, 32))


@pytest.fixture(autouse=True, params=["native", "python"])
def implementation(request, monkeypatch):
    """Every ring test runs on the C accelerator and on the pure-Python fallback."""
    if request.param == "native":
        if _accel.native is None:
            pytest.skip("engine.native._native is not built here (no C compiler at install time?)")
        _use_native(monkeypatch, _accel.native)
    else:
        _use_native(monkeypatch, None)
    return request.param


def _use_native(monkeypatch, native) -> None:
    """The writers the ring set hands out and the reader's parser: C (``native``) or not."""
    monkeypatch.setattr(_set, "_native", native)
    monkeypatch.setattr(_reader, "_native", native)


@pytest.fixture
def ring_set():
    rings = RingSet.create(RING_BYTES, 4)
    yield rings
    rings.close()
    rings.unlink()


def _write(writer, payload: bytes, *, kind=KIND_START, project=PROJECT, aux=7) -> bool:
    return writer.try_write(kind, 3, CALL_ID, TRACE_ID, project, payload, aux)


def _drain(reader) -> list:
    records = []
    while batch := reader.read():
        records.extend(batch)
        reader.release(batch[-1].slot, batch[-1].end_pos)
    return records


def _fill(writer, reader, total: int) -> None:
    """One record of ``total`` ring bytes (no project), then the ring drained."""
    while not _write(writer, b"f" * (total - HEADER_BYTES), project=b""):
        assert _drain(reader) == []  # the padding before it, published first
    _drain(reader)


def _advance_to_offset(writer, reader, target: int) -> None:
    """Move the (empty) ring's head to offset ``target``: to the lap's start with a record
    that ends right at the lap's end (records over half the ring may pass its middle), then
    one of ``target`` bytes. A head rests in a lap's second half only after such a record."""
    current = reader.heads()[writer.slot] % RING_BYTES
    if current >= RING_BYTES // 2:
        _fill(writer, reader, HEADER_BYTES)  # a small record there starts the next lap
        current = HEADER_BYTES
    if current:
        _fill(writer, reader, RING_BYTES - current)
    if target:
        _fill(writer, reader, target)
    assert reader.heads()[writer.slot] % RING_BYTES == target


# A head can never rest 8..48 bytes into the ring: no record is shorter than its header.
REACHABLE_OFFSETS = [0, *range(HEADER_BYTES, RING_BYTES, 8)]


def test_record_round_trips_every_field_byte_identical(ring_set):
    writer, reader = ring_set.writer(), ring_set.reader()
    before_ns = time.monotonic_ns()
    assert writer.try_write(KIND_END, 9, CALL_ID, TRACE_ID, PROJECT, b'{"id":"x"}', 1234)
    (record,) = reader.read()
    assert (record.slot, record.kind, record.flags, record.aux) == (writer.slot, KIND_END, 9, 1234)
    assert (record.call_id, record.trace_id, record.project) == (CALL_ID, TRACE_ID, PROJECT)
    assert record.payload == b'{"id":"x"}'
    assert record.end_pos == record_bytes(len(PROJECT), 10)
    assert before_ns <= record.enqueue_ns <= time.monotonic_ns()


def test_short_ids_are_zero_padded_to_16_bytes(ring_set):
    writer, reader = ring_set.writer(), ring_set.reader()
    assert writer.try_write(KIND_START, 0, b"", b"", b"", b"", 0)
    (record,) = reader.read()
    assert (record.call_id, record.trace_id, record.project, record.payload) == (
        bytes(16),
        bytes(16),
        b"",
        b"",
    )


def test_text_ids_written_again_and_again_land_as_their_bytes(ring_set):
    # the pure-Python writer keeps the bytes of the ids it parsed last (an end names its
    # start's id): each record must still carry its own ids, past the cache's bound too
    from engine.ring import _writer
    from engine.wire import _codec

    writer, reader = ring_set.writer(), ring_set.reader()
    ids = [_codec.uuid7() for _ in range(3 * _writer._MAX_RECENT_IDS)]
    trace = ids[0].replace("-", "").upper()  # the bare, upper-case hex form is a UUID too
    expected, records = [], []
    for i, call_id in enumerate(ids + ids[::-1]):
        assert writer.try_write(KIND_START, 0, call_id, trace, PROJECT, b"{}", 0)
        expected.append((_codec.uuid_bytes(call_id), _codec.uuid_bytes(ids[0])))
        if i % 50 == 0:
            with pytest.raises(ValueError, match="not a UUID"):
                writer.try_write(KIND_START, 0, call_id[:-1], None, PROJECT, b"{}", 0)
        if i % 8 == 7:
            records += _drain(reader)
    records += _drain(reader)
    assert [(r.call_id, r.trace_id) for r in records] == expected
    assert len(_writer._recent_ids) <= _writer._MAX_RECENT_IDS


@pytest.mark.parametrize("offset", REACHABLE_OFFSETS)
def test_record_sizes_around_the_ring_end_wrap_correctly(ring_set, offset):
    writer, reader = ring_set.writer(), ring_set.reader()
    _advance_to_offset(writer, reader, offset)
    tail_room = RING_BYTES - offset
    for total in {tail_room - 8, tail_room, tail_room + 8, HEADER_BYTES + 8}:
        payload_len = total - HEADER_BYTES - len(PROJECT)
        if not 0 <= payload_len <= writer.max_record_bytes:
            continue
        payload = os.urandom(payload_len)
        head_offset = reader.heads()[writer.slot] % RING_BYTES  # (earlier totals moved it)
        while not _write(writer, payload):
            # it wraps, and is larger than what the ring holds besides the padding before
            # it: the padding is published, read and released first (nothing else is there)
            assert total > head_offset and _drain(reader) == []
        (record,) = _drain(reader)
        assert record.payload == payload and record.project == PROJECT


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 1480), min_size=1, max_size=60),
    read_budgets=st.lists(st.integers(1, 5), min_size=1, max_size=8),
)
def test_any_sequence_of_sizes_arrives_in_order_byte_identical(sizes, read_budgets):
    _sizes_arrive_in_order(sizes, read_budgets)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, RING_BYTES - HEADER_BYTES - MAX_PROJECT_BYTES), min_size=1,
                   max_size=30),
    read_budgets=st.lists(st.integers(1, 3), min_size=1, max_size=8),
)
def test_records_up_to_the_whole_ring_arrive_in_order_byte_identical(sizes, read_budgets):
    """Records larger than half the ring wait for the padding before them to be released
    (published early, once its room is free): nothing unread is overwritten."""
    _sizes_arrive_in_order(sizes, read_budgets)


def _sizes_arrive_in_order(sizes: list[int], read_budgets: list[int]) -> None:
    rings = RingSet.create(RING_BYTES, 1)
    try:
        writer, reader = rings.writer(), rings.reader()
        sent, received, turn = [], [], 0
        for index, size in enumerate(sizes):
            payload = bytes([index % 251]) * size
            while not _write(writer, payload, aux=index):
                batch = reader.read(max_records=read_budgets[turn % len(read_budgets)])
                turn += 1
                received.extend(batch)
                if batch:  # else only padding was read (and released)
                    reader.release(batch[-1].slot, batch[-1].end_pos)
            sent.append((index, payload))
        received.extend(_drain(reader))
        assert [(r.aux, r.payload) for r in received] == sent
        assert rings.counters()["records_released"] == len(sizes)
    finally:
        rings.close()
        rings.unlink()


def test_largest_record_fits_at_any_offset_and_larger_raises(ring_set):
    """A record may take the whole ring: at an offset where it does not fit before the end,
    the padding is published first, and it is written once the reader released that."""
    writer, reader = ring_set.writer(), ring_set.reader()
    project = b"p" * MAX_PROJECT_BYTES
    payload = b"m" * writer.max_record_bytes
    for offset in (0, HEADER_BYTES, RING_BYTES // 2 - 8, RING_BYTES // 2 + 8, RING_BYTES - 8):
        _advance_to_offset(writer, reader, offset)
        attempts = 1
        while not _write(writer, payload, project=project):
            assert _drain(reader) == []  # the padding only
            attempts += 1
        assert attempts == (1 if offset == 0 else 2)
        (record,) = _drain(reader)
        assert record.payload == payload
    with pytest.raises(ValueError, match="does not fit"):
        _write(writer, payload + b"m" * 8, project=project)


def test_full_ring_refuses_until_released(ring_set):
    writer, reader = ring_set.writer(), ring_set.reader()
    payload = b"x" * 1000
    while _write(writer, payload):
        pass
    assert not writer.write(KIND_START, 0, CALL_ID, TRACE_ID, PROJECT, payload, 0, timeout_s=0.01)
    records = reader.read()
    assert not _write(writer, payload), "reading alone must not free space"
    reader.release(writer.slot, records[0].end_pos)
    assert _write(writer, payload)
    assert ring_set.counters()["full_waits"] == 1


def test_read_honours_record_and_byte_budgets_but_always_returns_one(ring_set):
    writer, reader = ring_set.writer(), ring_set.reader()
    for _ in range(6):
        assert _write(writer, b"y" * 200)
    assert len(reader.read(max_records=2)) == 2
    assert len(reader.read(max_bytes=1)) == 1
    assert len(reader.read()) == 3


def test_rewind_rereads_everything_not_released(ring_set):
    writer, reader = ring_set.writer(), ring_set.reader()
    for index in range(5):
        assert _write(writer, bytes([index]))
    first = reader.read()
    reader.release(writer.slot, first[1].end_pos)
    assert reader.read() == []
    reader.rewind()
    assert [r.payload for r in reader.read()] == [bytes([i]) for i in range(2, 5)]


def test_new_reader_starts_at_the_release_position(ring_set):
    writer, reader = ring_set.writer(), ring_set.reader()
    for index in range(3):
        assert _write(writer, bytes([index]))
    records = reader.read()
    reader.release(writer.slot, records[0].end_pos)
    reader.close()
    assert [r.payload for r in ring_set.reader().read()] == [b"\x01", b"\x02"]


def test_release_is_monotone_and_bounded_by_the_read_position(ring_set):
    writer, reader = ring_set.writer(), ring_set.reader()
    assert _write(writer, b"a") and _write(writer, b"b")
    first, second = reader.read()
    reader.release(writer.slot, second.end_pos)
    reader.release(writer.slot, first.end_pos)
    assert reader.released()[writer.slot] == second.end_pos
    assert _write(writer, b"c")
    with pytest.raises(ValueError, match="past the read position"):
        reader.release(writer.slot, second.end_pos + 64)


def test_heads_and_released_track_positions_for_flush(ring_set):
    writer, reader = ring_set.writer(), ring_set.reader()
    assert _write(writer, b"z")
    heads = reader.heads()
    assert heads[writer.slot] > reader.released()[writer.slot]
    _drain(reader)
    assert all(r >= h for r, h in zip(reader.released(), heads))


def test_slots_are_read_round_robin(ring_set):
    writers = [ring_set.writer() for _ in range(3)]
    reader = ring_set.reader()
    for writer in writers:
        for _ in range(10):
            assert _write(writer, b"r")
    batch = reader.read(max_records=6)
    assert sorted(r.slot for r in batch) == sorted([w.slot for w in writers] * 2)


def test_closed_slot_is_freed_only_after_its_data_is_released(ring_set):
    writer, reader = ring_set.writer(), ring_set.reader()
    assert _write(writer, b"last words")
    writer.close()
    assert reader.reap() == []
    (record,) = reader.read()
    assert reader.reap() == []
    reader.release(record.slot, record.end_pos)
    assert reader.reap() == [writer.slot]
    assert ring_set.writer().slot == writer.slot
    assert ring_set.counters()["slots"][writer.slot]["times_claimed"] == 2


def test_slot_claims_fail_clearly_when_all_are_taken(ring_set):
    for _ in range(4):
        ring_set.writer()
    with pytest.raises(RuntimeError, match="all 4 ring slots are in use"):
        ring_set.writer()


def test_a_claim_waits_for_a_slot_to_be_freed_up_to_its_limit(ring_set):
    writers = [ring_set.writer() for _ in range(4)]
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="all 4 ring slots are in use"):
        ring_set.writer(wait_s=0.2)
    assert time.monotonic() - started >= 0.15
    reader = ring_set.reader()
    writers[2].close()  # a closed (or dead) producer's slot is freed once drained: reap
    freer = threading.Timer(0.1, reader.reap)
    freer.start()
    try:
        assert ring_set.writer(wait_s=10).slot == writers[2].slot
    finally:
        freer.join()


@pytest.mark.parametrize("freed_after_s", [0.1, 0.6])
def test_a_claim_that_waits_briefly_for_a_slot_is_not_logged(ring_set, caplog, monkeypatch,
                                                             freed_after_s):  # fmt: skip
    """A recycled pool worker waits ~0.1 s for its predecessor's slot (the sender reaps
    every 0.1 s): one WARNING per worker was hundreds of lines over a long eval."""
    monkeypatch.setattr("engine.ring._set.SLOT_WAIT_SAID_S", 0.4)
    writers = [ring_set.writer() for _ in range(4)]
    reader = ring_set.reader()
    writers[1].close()
    freer = threading.Timer(freed_after_s, reader.reap)
    freer.start()
    try:
        with caplog.at_level(logging.WARNING, logger="engine.ring"):
            assert ring_set.writer(wait_s=10).slot == writers[1].slot
    finally:
        freer.join()
    said = [r.getMessage() for r in caplog.records if "ring slots are in use" in r.getMessage()]
    if freed_after_s < 0.4:
        assert said == []
    else:
        assert len(said) == 1 and re.search(r"waited 0\.[45] s so far, up to 10\.0 s", said[0]), said


def _claim_write_and_exit(spec) -> None:
    writer = RingSet.attach(spec).writer()
    assert writer.try_write(KIND_COMPLETE, 0, CALL_ID, TRACE_ID, PROJECT, b"from child", 0)
    os._exit(0)  # dies without closing its slot


def test_dead_producer_data_stays_readable_then_its_slot_is_reclaimed(ring_set):
    reader = ring_set.reader()
    child = multiprocessing.get_context("spawn").Process(
        target=_claim_write_and_exit, args=(ring_set.spec,)
    )
    child.start()
    child.join(60)
    assert child.exitcode == 0
    (record,) = reader.read()
    assert record.payload == b"from child"
    assert reader.reap() == []
    assert ring_set.counters()["slots"][record.slot]["state"] == "dead"
    reader.release(record.slot, record.end_pos)
    assert reader.reap() == [record.slot]


def test_close_in_a_forked_child_leaves_the_parent_slot_alone(ring_set):
    writer = ring_set.writer()
    child = multiprocessing.get_context("fork").Process(target=writer.close)
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert ring_set.counters()["slots"][writer.slot]["state"] == "active"


def test_counters_count_records_and_bytes_in_any_process(ring_set):
    writer, reader = ring_set.writer(), ring_set.reader()
    for _ in range(3):
        assert _write(writer, b"c" * 10)
    records = reader.read()
    reader.release(writer.slot, records[0].end_pos)
    other = RingSet.attach(ring_set.spec)
    counters = other.counters()
    other.close()
    assert (counters["records_written"], counters["records_read"]) == (3, 3)
    assert counters["records_released"] == 1 and counters["slots_in_use"] == 1
    assert counters["bytes_written"] == 3 * record_bytes(len(PROJECT), 10)
    assert counters["bytes_released"] == record_bytes(len(PROJECT), 10)


def test_doorbell_rings_once_for_a_sleeping_consumer(ring_set):
    writer, reader = ring_set.writer(), ring_set.reader()
    assert reader.prepare_sleep()
    assert _write(writer, b"wake") and _write(writer, b"again")
    readable, _, _ = select.select([reader.fileno()], [], [], 10)
    assert readable == [reader.fileno()]
    reader.clear_doorbell()
    assert select.select([reader.fileno()], [], [], 0)[0] == []
    assert ring_set.counters()["doorbells"] == 1
    assert not reader.prepare_sleep(), "data is pending: the consumer must not sleep"


def test_no_doorbell_while_the_consumer_is_awake(ring_set):
    writer, reader = ring_set.writer(), ring_set.reader()
    assert _write(writer, b"quiet")
    assert select.select([reader.fileno()], [], [], 0)[0] == []
    assert ring_set.counters()["doorbells"] == 0


def test_ring_set_and_spec_pickle_to_an_attached_copy(ring_set):
    writer = ring_set.writer()
    assert _write(writer, b"shared")
    copy = pickle.loads(pickle.dumps(ring_set))
    assert pickle.loads(pickle.dumps(ring_set.spec)) == ring_set.spec
    assert copy.counters()["records_written"] == 1
    copy.close()


def test_files_are_private_to_the_user(ring_set):
    segment = os.stat(ring_files.segment_path(ring_set.spec.shm_name))
    private_dir = os.stat(os.path.dirname(ring_set.spec.lock_path))
    assert stat.S_IMODE(segment.st_mode) == 0o600
    assert stat.S_IMODE(private_dir.st_mode) == 0o700
    assert stat.S_IMODE(os.stat(ring_set.spec.doorbell_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(ring_set.spec.lock_path).st_mode) == 0o600


def test_the_closed_mark_is_private_to_the_user(tmp_path):
    from engine.ring._orphans import CLOSED_MARK, mark_closed

    mark_closed(str(tmp_path))  # before: 0644 (open()'s umask default) in a 0700 folder
    assert stat.S_IMODE(os.stat(tmp_path / CLOSED_MARK).st_mode) == 0o600


def _ring_paths(spec) -> list[str]:
    return [ring_files.segment_path(spec.shm_name), os.path.dirname(spec.lock_path)]


def test_unlink_removes_every_file_and_is_idempotent():
    rings = RingSet.create(RING_BYTES, 2)
    rings.close()
    rings.unlink()
    rings.unlink()
    assert not any(os.path.exists(p) for p in _ring_paths(rings.spec))


_OWNER_SCRIPT = """
import sys
from engine.ring import RingSet
rings = RingSet.create(4096, 2)
rings.writer()
print(rings.spec.shm_name, rings.spec.lock_path, flush=True)
sys.stdin.read()
"""


def test_create_removes_files_left_by_a_killed_owner():
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER_SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    try:
        shm_name, lock_path = owner.stdout.readline().split()
        paths = [ring_files.segment_path(shm_name), os.path.dirname(lock_path)]
        assert all(os.path.exists(p) for p in paths)
        rings = RingSet.create(RING_BYTES, 1)
        assert all(os.path.exists(p) for p in paths), "a live owner's files must stay"
        rings.close()
        rings.unlink()
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait(30)
        owner.stdin.close()
        owner.stdout.close()
    rings = RingSet.create(RING_BYTES, 1)
    rings.close()
    rings.unlink()
    assert not any(os.path.exists(p) for p in paths)


def test_records_larger_than_one_copy_are_read_whole():
    rings = RingSet.create(2 << 20, 1)
    try:
        writer, reader = rings.writer(), rings.reader()
        payloads = [os.urandom(writer.max_record_bytes), b"small", os.urandom(300 << 10)]
        received = []
        for payload in payloads:
            assert _write(writer, payload)
            received.extend(_drain(reader))
        assert [r.payload for r in received] == payloads
    finally:
        rings.close()
        rings.unlink()


@pytest.mark.parametrize("writer_impl", ["native", "python"])
def test_native_and_python_sides_read_each_others_records(writer_impl, implementation,
                                                           monkeypatch):
    """A C writer with a Python reader (and the reverse) agree on every byte of the format."""
    if _accel.native is None:
        pytest.skip("engine.native._native is not built here")
    rings = RingSet.create(RING_BYTES, 1)
    try:
        monkeypatch.setattr(_set, "_native", _accel.native if writer_impl == "native" else None)
        writer = rings.writer()  # the reader keeps the fixture's implementation
        reader = rings.reader()
        sent, received = [], []
        for index in range(200):  # several laps, padding records and short tails included
            payload = os.urandom(index * 37 % 1400)
            while not writer.try_write(KIND_END, index % 7, CALL_ID, TRACE_ID, PROJECT,
                                       payload, index):
                received.extend(_drain(reader))
            sent.append((KIND_END, index % 7, CALL_ID, TRACE_ID, PROJECT, payload, index))
        received.extend(_drain(reader))
        assert [(r.kind, r.flags, r.call_id, r.trace_id, r.project, r.payload, r.aux)
                for r in received] == sent
    finally:
        rings.close()
        rings.unlink()


def _splice_ring():
    rings = RingSet.create(RING_BYTES, 1)
    writer, reader = rings.writer(), rings.reader()
    reader.splice_max_bytes = 1 << 20
    return rings, writer, reader


OTHER_ID = bytes(range(100, 116))


def test_reader_splices_a_start_and_its_adjacent_end_into_one_record(implementation):
    """C reader: start + its own end right behind it -> one complete item, two ring records."""
    rings, writer, reader = _splice_ring()
    try:
        start, end = b'{"id":"a","inputs":{}}', b'{"id":"a","ended_at":"t","output":1}'
        aux = end.index(b'"ended_at"')
        assert writer.try_write(KIND_START, 0, CALL_ID, TRACE_ID, PROJECT, start, 0)
        assert writer.try_write(KIND_END, 1, CALL_ID, TRACE_ID, PROJECT, end, aux)
        records = reader.read()
        if implementation == "python":  # the pure-Python reader leaves pairing to the router
            assert [r.kind for r in records] == [KIND_START, KIND_END]
            return
        (record,) = records
        start_end = record_bytes(len(PROJECT), len(start))
        assert record.kind == ring.KIND_SPLICED and record.flags == 1
        assert record.payload == start[:-1] + b"," + end[aux:]
        assert (record.call_id, record.trace_id, record.project) == (CALL_ID, TRACE_ID, PROJECT)
        assert record.aux == start_end
        assert record.end_pos == start_end + record_bytes(len(PROJECT), len(end))
        assert reader.last_read_records == 2 and rings.counters()["records_read"] == 2
        reader.release(0, record.end_pos)
        assert rings.counters()["records_released"] == 2
    finally:
        rings.close()
        rings.unlink()


@pytest.mark.parametrize("case", ["other id", "other project", "end first", "too big",
                                  "no brace", "not adjacent"])
def test_reader_splices_only_a_start_with_its_own_adjacent_end(case):
    rings, writer, reader = _splice_ring()
    try:
        start, end = b'{"id":"a"}', b'{"id":"a","ended_at":"t"}'
        aux = end.index(b'"ended_at"')
        first = (KIND_START, 0, CALL_ID, TRACE_ID, PROJECT, start, 0)
        second = [KIND_END, 0, CALL_ID, TRACE_ID, PROJECT, end, aux]
        if case == "other id":
            second[2] = OTHER_ID
        elif case == "other project":
            second[4] = b"entity/other"
        elif case == "end first":
            first, second = tuple(second), list(first)
        elif case == "too big":
            reader.splice_max_bytes = len(start) + len(end) - aux - 1
        elif case == "no brace":
            first = (KIND_START, 0, CALL_ID, TRACE_ID, PROJECT, b'{"id":"a"} ', 0)
        assert writer.try_write(*first)
        if case == "not adjacent":
            assert writer.try_write(KIND_START, 0, OTHER_ID, TRACE_ID, PROJECT, start, 0)
        assert writer.try_write(*second)
        records = reader.read()
        assert ring.KIND_SPLICED not in [r.kind for r in records]
        assert len(records) == (3 if case == "not adjacent" else 2)
    finally:
        rings.close()
        rings.unlink()


def test_put_item_hands_back_what_it_did_not_write(tmp_path):
    """The Tracer's one-call path (native only): header read off the Struct, refused bytes
    returned with the code instead of kept, UNPLANNED where put() must do the work."""
    if _accel.native is None:
        pytest.skip("engine.native._native is not built here")
    import datetime as dt

    import msgspec

    import engine.producer._tracer  # noqa: F401  (registers the wire Structs with the C encoder)
    from engine.wire import _codec
    from engine.wire.calls import StartedCallSchemaForInsert

    class Unplanned(StartedCallSchemaForInsert):
        pass

    ringset = ring.RingSet.create(1 << 16, 2)
    try:
        writer = ringset.writer()
        projects: dict[str, bytes] = {}
        put_item = writer.fast_put(_codec.encoder, 1 << 20, projects)
        if _set._native is None:  # the pure writer has no one-call path: put() does it all
            assert put_item is None
            return
        start = StartedCallSchemaForInsert(
            project_id="e/p", id=_codec.uuid7(), trace_id=_codec.uuid7(), op_name="op",
            started_at=dt.datetime.now(dt.timezone.utc), attributes={}, inputs={"p": "x" * 9000})
        assert put_item(start, ring.KIND_START, 0, False) == ring.UNPLANNED  # project unbound
        projects["e/p"] = b"e/p"
        assert put_item(msgspec.structs.replace(start, id=None), 1, 0, False) == ring.UNPLANNED
        assert put_item(Unplanned(**msgspec.structs.asdict(start)), 1, 0, False) == ring.UNPLANNED
        bad = msgspec.structs.replace(start, trace_id="not-a-uuid")
        assert put_item(bad, 1, 0, False) == ring.BAD_TRACE_ID
        written = 0
        while (result := put_item(start, ring.KIND_START, 0, False)) in (1, 2):
            written += 1
        code, payload = result
        assert code == ring.NO_ROOM and written >= 1
        assert payload == _codec.encoder.encode(start)
        assert writer.take_refused() is None  # nothing kept for another thread to take
        records = ringset.reader().read()
        assert len(records) == written
        assert {(r.call_id, bytes(r.payload)) for r in records} == {
            (_codec.uuid_bytes(start.id), payload)}
        writer.close()
        with pytest.raises(ValueError, match="released"):
            put_item(start, ring.KIND_START, 0, False)
    finally:
        ringset.close()
        ringset.unlink()


def test_the_call_paths_do_nothing_until_the_writer_is_bound():
    """``call_start`` / ``call_end`` of a writer ``fast_put`` has not bound answer None
    (the caller takes the general path) and write nothing."""
    if _accel.native is None:
        pytest.skip("engine.native._native is not built here")
    import datetime as dt

    import engine.producer._tracer  # noqa: F401  (registers the wire Structs with the C encoder)
    from engine.wire import _codec
    from engine.wire.calls import EndedCallSchemaForInsert, StartedCallSchemaForInsert

    ringset = ring.RingSet.create(1 << 16, 2)
    try:
        writer = ringset.writer()
        call_start, call_end = writer.fast_calls()
        if _set._native is None:  # the pure writer has no one-call paths
            assert (call_start, call_end) == (None, None)
            return
        now = dt.datetime.now(dt.timezone.utc)
        start = StartedCallSchemaForInsert(
            project_id="e/p", id=_codec.uuid7(), trace_id=_codec.uuid7(), op_name="op",
            started_at=now, attributes={}, inputs={})
        end = EndedCallSchemaForInsert(project_id="e/p", id=start.id, ended_at=now, summary={})
        assert call_start(start) is None and call_end(end) is None
        writer.fast_put(_codec.encoder, 1 << 20, {"e/p": b"e/p"})
        assert call_start(start).id == start.id and call_end(end) is True
        assert [r.kind for r in ringset.reader().read()] == [ring.KIND_START, ring.KIND_END]
        writer.detach()
    finally:
        ringset.close()
        ringset.unlink()
