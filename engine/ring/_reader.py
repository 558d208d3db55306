"""The reader half of the ring set: the sender's single consumer of every slot.

It reads round-robin up to each head it loaded, hands out records (sliced straight out of the
mapping by the C parser where it is built), and frees ring space only when told to release:
after the batch holding a record is settled. It also frees the slots of ended producers.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import threading
import weakref
from typing import TYPE_CHECKING

from engine.native._accel import native as _native
from engine.ring import _files as ring_files
from engine.ring._layout import (
    ACTIVE,
    CLOSING,
    DEAD,
    FREE,
    G_CLAIMS,
    G_SLEEPING,
    GLOBAL_WORDS,
    HEADER_BYTES,
    KIND_PAD,
    RECORD_HEADER,
    S_HEAD,
    S_PID,
    S_READ,
    S_RECORDS_READ,
    S_RECORDS_RELEASED,
    S_RELEASED,
    S_START_TICKS,
    S_STATE,
    SLOT_WORDS,
    Record,
    RunRecord,
    record_bytes,
)

if TYPE_CHECKING:
    from engine.ring._set import RingSet

_COPY_BYTES = 256 << 10  # per copy out of the ring: bounds the waste when budgets cut a read


class RingReader:
    """The single consumer of its slots: reads round-robin over them, releases after
    acknowledgement. Sender ``shard`` of ``shards`` reads slots ``s % shards == shard``
    (one reader of every slot by default), sleeping on its own flag and doorbell."""

    def __init__(self, ring_set: RingSet, shard: int = 0, shards: int = 1) -> None:
        spec = ring_set.spec
        if not 0 <= shard < shards:
            raise ValueError(f"shard {shard} is not one of 0..{shards - 1}")
        self._ring_set = ring_set
        self._words = ring_set._words
        self._mm = ring_set._mm
        self._ring_bytes = spec.ring_bytes
        self._max_slots = spec.max_slots
        self._slots = range(shard, spec.max_slots, shards)
        self._sleeping_word = G_SLEEPING + shard
        self._data_offset = ring_set._data_offset
        self._read = [self._word(s, S_RELEASED) for s in range(spec.max_slots)]
        for slot in self._slots:
            self._set_word(slot, S_READ, self._read[slot])
        # per slot, [end positions, lo, hi] runs read but not yet released, to count releases
        self._unreleased: list[list[list]] = [[] for _ in range(spec.max_slots)]
        self._records_read = [self._word(s, S_RECORDS_READ) for s in range(spec.max_slots)]
        self._claims_seen = -1
        self._active: list[int] = []
        # > 0: a start directly followed by its own end is read as one KIND_SPLICED record
        # of at most this many payload bytes (C accelerator only; see engine.native._native.parse)
        self.splice_max_bytes = 0
        # > 0 (with splicing): two or more complete calls side by side are read as one
        # RunRecord of at most this many payload bytes (C accelerator only)
        self.run_max_bytes = 0
        self.last_read_records = 0  # ring records the last read() took (a splice is two)
        self._next_index = 0
        self._doorbell_fd = os.open(spec.doorbell_of(shard), os.O_RDWR | os.O_NONBLOCK)
        # O_RDWR: the FIFO always has a writer, so it never reports hang-up (EOF) to poll.
        self._close_doorbell = weakref.finalize(self, os.close, self._doorbell_fd)
        self._fence_lock = threading.Lock()

    @property
    def slots(self) -> range:
        """The slots this reader reads."""
        return self._slots

    def active_slot_count(self) -> int:
        """How many of this reader's slots a producer holds."""
        return len(self._active_slots())

    def _word(self, slot: int, word: int) -> int:
        return self._words[GLOBAL_WORDS + slot * SLOT_WORDS + word]

    def _set_word(self, slot: int, word: int, value: int) -> None:
        self._words[GLOBAL_WORDS + slot * SLOT_WORDS + word] = value

    def _active_slots(self) -> list[int]:
        claims = self._words[G_CLAIMS]
        if claims != self._claims_seen:
            self._claims_seen = claims
            self._refresh_active()
        return self._active

    def _refresh_active(self) -> None:
        self._active = [s for s in self._slots if self._word(s, S_STATE) != FREE]

    def read(self, max_records: int = 4096, max_bytes: int = 8 << 20) -> list[Record]:
        """Read up to the budgets, round-robin over slots; advances read positions only."""
        out: list[Record] = []
        self.last_read_records = 0
        active = self._active_slots()
        count = len(active)
        if not count:
            return out
        first = self._next_index % count
        self._next_index = first + 1
        share_records = max(1, -(-max_records // count))
        share_bytes = max(1, -(-max_bytes // count))
        for i in range(count):
            budget_records = min(share_records, max_records - len(out))
            if budget_records <= 0:
                break
            self._read_slot(active[(first + i) % count], out, budget_records, share_bytes)
        return out

    def _read_slot(self, slot: int, out: list, max_records: int, max_bytes: int) -> None:
        head = self._word(slot, S_HEAD)
        position = self._read[slot]
        if head == position:
            return
        ring_bytes = self._ring_bytes
        base = self._data_offset + slot * ring_bytes
        limit = len(out) + max_records
        ends: list[int] = []  # end position of every ring record taken (two per splice)
        while position < head and len(out) < limit and max_bytes > 0:
            offset = position % ring_bytes
            if _native:  # slices records straight out of the mapping: one copy each
                span = min(head - position, ring_bytes - offset)
                used = _native.parse(self._mm, base + offset, base + offset + span, slot,
                                     position, out, limit, max_bytes, Record, ends,
                                     self.splice_max_bytes, self.run_max_bytes, RunRecord)
            else:  # copy a bounded readable region once and slice the records out of it
                span = min(head - position, ring_bytes - offset, _COPY_BYTES)
                chunk = self._mm[base + offset : base + offset + span]
                used = _parse(chunk, slot, position, out, limit, max_bytes, ends)
            if used == 0:  # padding, a short tail, or a record larger than the copy
                used = self._read_large_record(slot, base, position, out, ends)
            position += used
            max_bytes -= used
        self._commit_read(slot, position, ends)

    def _read_large_record(self, slot: int, base: int, position: int, out: list,
                           ends: list[int]) -> int:
        offset = position % self._ring_bytes
        tail_room = self._ring_bytes - offset
        if tail_room < HEADER_BYTES:
            return tail_room
        kind, _, project_len, payload_len, *_ = RECORD_HEADER.unpack_from(self._mm, base + offset)
        if kind == KIND_PAD:
            return tail_room
        size = record_bytes(project_len, payload_len)
        chunk = self._mm[base + offset : base + offset + size]
        return _parse(chunk, slot, position, out, len(out) + 1, size, ends)

    def _commit_read(self, slot: int, position: int, ends: list[int]) -> None:
        self._read[slot] = position
        taken = len(ends)
        self.last_read_records += taken
        if taken:
            # only the end positions: holding the records would keep their payloads alive
            self._unreleased[slot].append([ends, 0, taken])
            self._records_read[slot] += taken
            self._set_word(slot, S_RECORDS_READ, self._records_read[slot])
        elif not self._unreleased[slot]:
            # only padding read, and everything before it released: no acknowledgement will
            # release it, and a record larger than the rest of the ring waits for it
            self._set_word(slot, S_RELEASED, position)
        self._set_word(slot, S_READ, position)

    def release(self, slot: int, end_pos: int) -> None:
        """Free ring space up to ``end_pos`` (monotone; never past the read position)."""
        if end_pos <= self._word(slot, S_RELEASED):
            return
        if end_pos > self._read[slot]:
            raise ValueError(
                f"slot {slot}: release to {end_pos} is past the read position {self._read[slot]}"
            )
        done = _drop_released(self._unreleased[slot], slot, end_pos)
        self._set_word(slot, S_RECORDS_RELEASED, self._word(slot, S_RECORDS_RELEASED) + done)
        # Padding after the last record read belongs to no record: once everything read is
        # released, release it too, or it would keep a closed slot from being reaped.
        self._set_word(slot, S_RELEASED, end_pos if self._unreleased[slot] else self._read[slot])

    def rewind(self) -> None:
        """read := released for each of its slots: unacknowledged records are read again."""
        for slot in self._slots:
            position = self._word(slot, S_RELEASED)
            self._read[slot] = position
            self._set_word(slot, S_READ, position)
            self._unreleased[slot].clear()

    def heads(self) -> list[int]:
        """Each slot's head (0 for another sender's slots)."""
        heads = [0] * self._max_slots
        for slot in self._slots:
            heads[slot] = self._word(slot, S_HEAD)
        return heads

    def read_past(self, heads: list[int]) -> bool:
        """Whether every slot was read up to ``heads`` (from :meth:`heads`), padding at a
        lap's end included."""
        read = self._read
        return all(read[slot] >= head for slot, head in enumerate(heads) if head)

    def released(self) -> list[int]:
        return [self._word(s, S_RELEASED) for s in range(self._max_slots)]

    def reap(self) -> list[int]:
        """Free its slots whose producer closed or died and whose data is all released."""
        freed = []
        for slot in self._slots:
            state = self._word(slot, S_STATE)
            if state == ACTIVE and not self._producer_alive(slot):
                state = DEAD
                self._set_word(slot, S_STATE, DEAD)
            if state in (CLOSING, DEAD) and self._drained(slot):
                self._set_word(slot, S_STATE, FREE)
                freed.append(slot)
        if freed:
            self._refresh_active()
        return freed

    def _producer_alive(self, slot: int) -> bool:
        return ring_files.is_alive(self._word(slot, S_PID), self._word(slot, S_START_TICKS))

    def _drained(self, slot: int) -> bool:
        return self._word(slot, S_RELEASED) == self._word(slot, S_HEAD)

    def fileno(self) -> int:
        """The doorbell fd: readable when a producer rang (for ``loop.add_reader``)."""
        return self._doorbell_fd

    def pending(self) -> bool:
        """Whether any slot has records not yet read."""
        return any(self._word(s, S_HEAD) != self._read[s] for s in self._active_slots())

    def prepare_sleep(self) -> bool:
        """Tell producers to ring the doorbell; False (and no flag) if data is already pending."""
        self._words[self._sleeping_word] = 1
        # A locked instruction orders the flag store before the head loads below.
        with self._fence_lock:
            pass
        if self.pending():
            self._words[self._sleeping_word] = 0
            return False
        return True

    def clear_doorbell(self) -> None:
        """Drain the doorbell FIFO and clear the sleeping flag."""
        self._words[self._sleeping_word] = 0
        with contextlib.suppress(BlockingIOError):
            while os.read(self._doorbell_fd, 4096):
                pass

    def close(self) -> None:
        """Close the doorbell (also done when the reader is garbage-collected)."""
        self._close_doorbell()
        self._doorbell_fd = -1


def _parse(chunk: bytes, slot: int, position: int, out: list, limit: int, max_bytes: int,
           ends: list[int]) -> int:
    """Append the whole records of ``chunk`` that start within ``max_bytes``; return bytes used.

    Stops at padding, at a ring tail shorter than a header and at a record cut by the chunk
    end; the caller tells those apart when nothing was used.
    """
    unpack_from = RECORD_HEADER.unpack_from
    append = out.append
    chunk_len = len(chunk)
    stop = min(max(max_bytes, 1), chunk_len - HEADER_BYTES + 1)
    offset = 0
    while offset < stop and len(out) < limit:
        kind, flags, project_len, payload_len, aux, call_id, trace_id, enqueue_ns = unpack_from(
            chunk, offset
        )
        if kind == KIND_PAD:
            break
        project_start = offset + HEADER_BYTES
        payload_start = project_start + project_len
        payload_end = payload_start + payload_len
        if payload_end > chunk_len:
            break
        offset = (payload_end + 7) & -8
        ends.append(position + offset)
        append(
            _new_tuple(
                Record,
                (
                    slot,
                    position + offset,
                    kind,
                    flags,
                    call_id,
                    trace_id,
                    chunk[project_start:payload_start],
                    chunk[payload_start:payload_end],
                    aux,
                    enqueue_ns,
                ),
            )  # fmt: skip
        )
    return offset


def _drop_released(runs: list[list], slot: int, end_pos: int) -> int:
    """Drop records ending at or before ``end_pos`` from the runs; return how many."""
    done = 0
    while runs:
        ends, lo, hi = runs[0]
        if ends[hi - 1] <= end_pos:
            done += hi - lo
            runs.pop(0)
            continue
        cut = bisect.bisect_right(ends, end_pos, lo, hi)
        done += cut - lo
        runs[0][1] = cut
        break
    return done


_new_tuple = tuple.__new__
