"""The ring set across processes: spawn, fork and forkserver producers, one consumer, SIGKILL."""

from __future__ import annotations

import multiprocessing
import os
import random
import select
import signal
import time

import pytest

from engine.ring import KIND_RAW, RingSet

RING_BYTES = 64 << 10
RECORDS_PER_PRODUCER = 1500
DEADLINE_S = 90


def _payload(producer: int, seq: int, max_bytes: int) -> bytes:
    """Deterministic payload: size log-uniform from 1 byte to ~max_bytes, content seeded."""
    rng = random.Random(producer * 1_000_003 + seq)
    size = max(1, int(max_bytes ** rng.random()))
    return rng.randbytes(size)


def _produce(spec, producer: int, count: int) -> None:
    rings = RingSet.attach(spec)
    writer = rings.writer()
    limit = int(writer.max_record_bytes * 0.9)
    for seq in range(count):
        payload = _payload(producer, seq, limit)
        call_id = producer.to_bytes(8, "little") + seq.to_bytes(8, "little")
        assert writer.write(KIND_RAW, 0, call_id, b"", b"e/p", payload, seq, timeout_s=DEADLINE_S)
    writer.close()
    rings.close()


def _start(context: str, spec, producer: int, count: int):
    process = multiprocessing.get_context(context).Process(
        target=_produce, args=(spec, producer, count)
    )
    process.start()
    return process


class _Consumer:
    """Reads and releases, checking per-producer order and bytes of every record."""

    def __init__(self, rings: RingSet, max_bytes: int) -> None:
        self.reader = rings.reader()
        self.next_seq: dict[int, int] = {}
        self.max_bytes = max_bytes

    def consume_once(self) -> int:
        batch = self.reader.read(max_records=256)
        for record in batch:
            producer = int.from_bytes(record.call_id[:8], "little")
            seq = int.from_bytes(record.call_id[8:], "little")
            assert seq == self.next_seq.get(producer, 0), f"producer {producer} out of order"
            assert record.aux == seq and record.project == b"e/p"
            assert record.payload == _payload(producer, seq, self.max_bytes)
            self.next_seq[producer] = seq + 1
        last_by_slot = {record.slot: record.end_pos for record in batch}
        for slot, end_pos in last_by_slot.items():
            self.reader.release(slot, end_pos)
        return len(batch)

    def consume_until(self, done, what: str) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not done():
            if self.consume_once() == 0:
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                self._sleep_until_doorbell(timeout_s=0.01)

    def _sleep_until_doorbell(self, timeout_s: float) -> None:
        # The timeout is the protocol's safety net for a wakeup lost to store reordering.
        if self.reader.prepare_sleep():
            select.select([self.reader.fileno()], [], [], timeout_s)
        self.reader.clear_doorbell()


@pytest.fixture
def rings():
    ring_set = RingSet.create(RING_BYTES, 8)
    yield ring_set
    ring_set.close()
    ring_set.unlink()


def _join_all(processes) -> None:
    for process in processes:
        process.join(DEADLINE_S)
        assert process.exitcode == 0, f"producer exited with {process.exitcode}"


@pytest.mark.slow
@pytest.mark.integration
def test_every_record_arrives_once_in_order_from_spawn_fork_and_forkserver(rings):
    limit = int(rings.max_record_bytes * 0.9)
    contexts = ["spawn", "fork", "forkserver", "fork"]
    producers = [
        _start(context, rings.spec, index, RECORDS_PER_PRODUCER)
        for index, context in enumerate(contexts)
    ]
    consumer = _Consumer(rings, limit)
    expected = dict.fromkeys(range(len(contexts)), RECORDS_PER_PRODUCER)
    consumer.consume_until(lambda: consumer.next_seq == expected, "all records")
    _join_all(producers)
    assert consumer.consume_once() == 0
    counters = rings.counters()
    assert counters["records_written"] == counters["records_released"] == sum(expected.values())
    assert counters["bytes_written"] > 10 * RING_BYTES, "the test must wrap many times"
    assert sorted(consumer.reader.reap()) == sorted(
        s["slot"] for s in counters["slots"] if s["state"] == "closing"
    )
    assert rings.counters()["slots_in_use"] == 0


@pytest.mark.slow
@pytest.mark.integration
def test_sigkilled_producer_leaves_others_whole_and_its_slot_is_reclaimed(rings):
    limit = int(rings.max_record_bytes * 0.9)
    victim = _start("spawn", rings.spec, 0, 10**9)
    survivors = [_start("fork", rings.spec, 1, 800), _start("spawn", rings.spec, 2, 800)]
    consumer = _Consumer(rings, limit)
    consumer.consume_until(lambda: consumer.next_seq.get(0, 0) >= 300, "the victim to write")
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(DEADLINE_S)
    assert victim.exitcode == -signal.SIGKILL
    consumer.consume_until(
        lambda: consumer.next_seq.get(1) == 800 and consumer.next_seq.get(2) == 800,
        "the survivors",
    )
    _join_all(survivors)
    while consumer.consume_once():  # whatever the victim published before it died
        pass
    victim_slot = next(s for s in rings.counters()["slots"] if s["pid"] == victim.pid)
    # SIGKILL may land between publishing a head and bumping the record counter
    assert consumer.next_seq[0] - victim_slot["records_written"] in (0, 1)
    assert victim_slot["slot"] in consumer.reader.reap()
    assert rings.counters()["slots_in_use"] == 0
