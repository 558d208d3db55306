"""The shared-memory ring set: one single-producer/single-consumer ring per producer slot.

Layout of the one segment (all integers native 64-bit, 8-byte aligned, so each store of a
position is a single machine store that the other side sees whole)::

    global block   magic, version, ring_bytes, max_slots, owner pid, claims, consumer-sleeping
    slot blocks    per slot three cache lines: producer (head, records written, full waits,
                   doorbells), consumer (read, released, records read, records released),
                   owner (state, pid, start ticks, times claimed)
    data           max_slots rings of ring_bytes each

Positions only grow; ``position % ring_bytes`` is the offset. A record is a fixed
``RECORD_HEADER`` (kind, flags, project length, payload length, aux, call id, trace id,
enqueue time) followed by project and payload, padded to 8 bytes. A record never wraps: if
it does not fit before the end of the ring, the producer writes a padding record (kind 0)
-- or nothing, when fewer than a header's bytes remain -- and starts again at offset 0.

The producer writes the bytes, then publishes its head; the consumer reads up to the head
it loaded, and frees space only by publishing ``released``. Nothing on the write path takes
a lock or makes a syscall, except the doorbell: a byte written to a FIFO when the consumer
has said it sleeps. The C writer (``NativeSlotWriter``, engine/native/_native.c) publishes with a
release store and fences before it reads the sleeping flag, so it is correct on any CPU. The
pure-Python fallback relies on the ordering of plain stores (x86-64 TSO); there a store and a
later load may still pass each other, so a wakeup can be lost in a window of nanoseconds --
the consumer sleeps with a bounded timeout (tens of ms) as a safety net either way.

Slots: a producer claims a free slot under ``flock`` (cold path) and records its pid and
start time. A slot is freed by the reader in ``reap()``: once its producer closed or died
*and* everything it wrote has been released. A ``SlotWriter`` belongs to the process that
claimed it: a forked child must drop the inherited one (``os.register_at_fork``) and claim
its own; ``SlotWriter.owner_pid`` says whose it is, and ``close()`` in another process is a
no-op so a child cannot free its parent's slot.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import logging
import mmap
import os
import struct
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, NamedTuple

from engine.native._accel import native as _native
from engine.ring import _files as _ring_files
from engine.wire._codec import uuid_bytes as _uuid_bytes
from engine.wire.calls import end_splice_offset

_log = logging.getLogger("engine.ring")


class NoFreeSlot(RuntimeError):
    """Every ring slot is claimed by a live producer process (or one whose data is not
    drained yet)."""

KIND_PAD = 0
KIND_START = 1
KIND_END = 2
KIND_COMPLETE = 3
KIND_RAW = 4
# Never in a ring: a start and its end that the reader spliced into one complete item.
# Its end_pos is the end's, its aux the start's end position (the two are adjacent).
KIND_SPLICED = 16

# kind u8, flags u8, project_len u16, payload_len u32, aux u32, pad u32,
# call_id 16s, trace_id 16s, enqueue_ns u64  (little-endian, no implicit alignment)
RECORD_HEADER = struct.Struct("<BBHII4x16s16sQ")
HEADER_BYTES = RECORD_HEADER.size  # 56
MAX_PROJECT_BYTES = 512
MIN_RING_BYTES = 4096

_MAGIC = 0x454E47494E455247  # "ENGINERG"
_VERSION = 1
_U64 = 8
_GLOBAL_WORDS = 16
_SLOT_WORDS = 24
_DATA_ALIGN_BYTES = 4096

# global words
_G_MAGIC, _G_VERSION, _G_RING_BYTES, _G_MAX_SLOTS, _G_OWNER_PID, _G_CLAIMS = range(6)
_G_SLEEPING = 8  # its own cache line: producers read it on every record
# slot words, relative to the slot block
_S_HEAD, _S_RECORDS_WRITTEN, _S_FULL_WAITS, _S_DOORBELLS = 0, 1, 2, 3
_S_READ, _S_RELEASED, _S_RECORDS_READ, _S_RECORDS_RELEASED = 8, 9, 10, 11
_S_STATE, _S_PID, _S_START_TICKS, _S_TIMES_CLAIMED = 16, 17, 18, 19

FREE, ACTIVE, CLOSING, DEAD = 0, 1, 2, 3
# SlotWriter.raw_write codes (engine.native._native.RingWriter.try_write returns the same)
WRITTEN, WRITTEN_RING, NO_ROOM = 1, 2, 0
TOO_LARGE, BAD_CALL_ID, BAD_TRACE_ID = -1, -2, -3
OVER_MAX_PAYLOAD, NO_SPLICE_KEY = -4, -5  # put() only (the pure put raises for the latter)
UNPLANNED = -6  # put_item() only: nothing done, use put()
_ZERO_ID = bytes(16)
_STATE_NAMES = {FREE: "free", ACTIVE: "active", CLOSING: "closing", DEAD: "dead"}

_COPY_BYTES = 256 << 10  # per copy out of the ring: bounds the waste when budgets cut a read
# A full ring waits for the sender, which shares the few cores with the producers: yield
# once, then sleep (spinning producers steal the CPU the sender needs to free space).
_SPIN_TRIES = 1
_FIRST_BACKOFF_S = 100e-6
_MAX_BACKOFF_S = 1e-3  # a sleeping producer notices freed space within 1 ms


@dataclass(frozen=True)
class RingSpec:
    """Everything a process needs to attach to a ring set; picklable, so it crosses spawn."""

    shm_name: str
    ring_bytes: int
    max_slots: int
    doorbell_path: str
    lock_path: str


class Record(NamedTuple):
    slot: int
    end_pos: int  # ring position just past this record: release up to it
    kind: int
    flags: int
    call_id: bytes
    trace_id: bytes
    project: bytes
    payload: bytes
    aux: int
    enqueue_ns: int


def record_bytes(project_len: int, payload_len: int) -> int:
    """Ring bytes one record occupies (header, project, payload, padding to 8)."""
    return (HEADER_BYTES + project_len + payload_len + 7) & ~7


def _data_offset(max_slots: int) -> int:
    control = (_GLOBAL_WORDS + _SLOT_WORDS * max_slots) * _U64
    return -(-control // _DATA_ALIGN_BYTES) * _DATA_ALIGN_BYTES


def _validate(ring_bytes: int, max_slots: int) -> None:
    if ring_bytes < MIN_RING_BYTES or ring_bytes % 8:
        raise ValueError(
            f"ring_bytes must be a multiple of 8 and >= {MIN_RING_BYTES}, got {ring_bytes}"
        )
    if ring_bytes >= 1 << 40:
        raise ValueError(f"ring_bytes must be < 1 TiB, got {ring_bytes}")
    if max_slots < 1:
        raise ValueError(f"max_slots must be >= 1, got {max_slots}")


class RingSet:
    """A set of ``max_slots`` rings of ``ring_bytes`` each in one shared-memory segment.

    The owner ``create()``s it and finally ``unlink()``s it; every other process
    ``attach()``es with the picklable ``spec``. One process -- the sender -- reads.
    """

    def __init__(self, spec: RingSpec, mm: mmap.mmap, *, owner: bool) -> None:
        self.spec = spec
        self._mm = mm
        self._owner = owner
        self._words = memoryview(mm)[: _data_offset(spec.max_slots)].cast("Q")
        self._data_offset = _data_offset(spec.max_slots)
        self._closed = False
        # native writers hold the mapping's buffer: given back before the mapping closes
        self._writers: weakref.WeakSet[SlotWriter] = weakref.WeakSet()
        self._readers: weakref.WeakSet[RingReader] = weakref.WeakSet()  # their doorbell fds

    @classmethod
    def create(cls, ring_bytes: int, max_slots: int) -> RingSet:
        """Create a ring set owned by this process; first removes leftovers of dead owners."""
        _validate(ring_bytes, max_slots)
        _ring_files.remove_stale_ring_files()
        private_dir = _ring_files.make_private_dir()
        name = os.path.basename(private_dir)
        spec = RingSpec(
            shm_name=name,
            ring_bytes=ring_bytes,
            max_slots=max_slots,
            doorbell_path=os.path.join(private_dir, "doorbell"),
            lock_path=os.path.join(private_dir, "slots.lock"),
        )
        try:
            return cls._create_files(spec)
        except BaseException:
            _ring_files.remove_ring_files(name, private_dir)
            raise

    @classmethod
    def _create_files(cls, spec: RingSpec) -> RingSet:
        os.mkfifo(spec.doorbell_path, 0o600)
        os.close(os.open(spec.lock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        size = _data_offset(spec.max_slots) + spec.ring_bytes * spec.max_slots
        fd = _ring_files.create_segment(spec.shm_name, size)
        try:
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        ring_set = cls(spec, mm, owner=True)
        words = ring_set._words
        words[_G_VERSION] = _VERSION
        words[_G_RING_BYTES] = spec.ring_bytes
        words[_G_MAX_SLOTS] = spec.max_slots
        words[_G_OWNER_PID] = os.getpid()
        words[_G_MAGIC] = _MAGIC
        return ring_set

    @classmethod
    def attach(cls, spec: RingSpec) -> RingSet:
        """Map an existing ring set (any process: forked, spawned, forkserver)."""
        fd = os.open(_ring_files.segment_path(spec.shm_name), os.O_RDWR)
        try:
            mm = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        ring_set = cls(spec, mm, owner=False)
        words = ring_set._words
        if words[_G_MAGIC] != _MAGIC or words[_G_RING_BYTES] != spec.ring_bytes:
            ring_set.close()
            raise ValueError(f"segment {spec.shm_name} does not match its spec")
        return ring_set

    def __reduce__(self):
        return (RingSet.attach, (self.spec,))

    @property
    def max_record_bytes(self) -> int:
        """Largest payload that always fits, with any project of up to MAX_PROJECT_BYTES."""
        return ((self.spec.ring_bytes // 2) & ~7) - HEADER_BYTES - MAX_PROJECT_BYTES

    def writer(self, wait_s: float = 0.0) -> SlotWriter:
        """Claim a free slot for this process (cold path: takes the slot lock). When every
        slot is taken, wait up to ``wait_s`` for the sender to free one whose producer
        ended (it does once the slot's data is drained), then raise ``NoFreeSlot``."""
        deadline = time.monotonic() + wait_s
        pause_s, waited = 0.005, False
        while True:
            try:
                slot = self._claim_slot()
                break
            except NoFreeSlot:
                if time.monotonic() + pause_s > deadline:
                    raise
                if not waited:
                    _log.warning("all %d ring slots are in use; waiting up to %.1f s for one "
                                 "to be freed", self.spec.max_slots, wait_s)
                    waited = True
                time.sleep(pause_s)
                pause_s = min(pause_s * 2, 0.1)
        writer = (NativeSlotWriter if _native else SlotWriter)(self, slot)
        self._writers.add(writer)
        return writer

    def reader(self) -> RingReader:
        """The consumer. There must be only one at a time; it starts at the release positions."""
        reader = RingReader(self)
        self._readers.add(reader)
        return reader

    def _claim_slot(self) -> int:
        pid = os.getpid()
        start_ticks = _ring_files.process_start_ticks(pid) or 0
        with self._slot_lock():
            words = self._words
            for slot in range(self.spec.max_slots):
                base = _GLOBAL_WORDS + slot * _SLOT_WORDS
                if words[base + _S_STATE] == FREE:
                    words[base + _S_PID] = pid
                    words[base + _S_START_TICKS] = start_ticks
                    words[base + _S_TIMES_CLAIMED] += 1
                    words[base + _S_STATE] = ACTIVE
                    words[_G_CLAIMS] += 1
                    return slot
        raise NoFreeSlot(
            f"all {self.spec.max_slots} ring slots are in use (max_slots too small for the "
            "number of producer processes?)"
        )

    @contextlib.contextmanager
    def _slot_lock(self):
        fd = os.open(self.spec.lock_path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def _slot_word(self, slot: int, word: int) -> int:
        return self._words[_GLOBAL_WORDS + slot * _SLOT_WORDS + word]

    def positions(self) -> tuple[list[int], list[int]]:
        """Per slot (head, release position): what flush() compares; no side effects."""
        heads = [self._slot_word(s, _S_HEAD) for s in range(self.spec.max_slots)]
        released = [self._slot_word(s, _S_RELEASED) for s in range(self.spec.max_slots)]
        return heads, released

    def counters(self) -> dict:
        """Per-slot and total counters, read from shared memory (any process).

        ``bytes_*`` are ring bytes (framing included) and equal the positions, which never
        reset; ``records_read`` counts re-reads after ``rewind()``. All are cumulative over
        every producer that held the slot.
        """
        slots = [self._slot_counters(slot) for slot in range(self.spec.max_slots)]
        totals = {key: sum(s[key] for s in slots) for key in _SUMMED_COUNTERS}
        totals["slots_in_use"] = sum(s["state"] != "free" for s in slots)
        totals["slots"] = slots
        return totals

    def _slot_counters(self, slot: int) -> dict:
        def word(w: int) -> int:
            return self._slot_word(slot, w)

        return {
            "slot": slot,
            "state": _STATE_NAMES[word(_S_STATE)],
            "pid": word(_S_PID),
            "records_written": word(_S_RECORDS_WRITTEN),
            "records_read": word(_S_RECORDS_READ),
            "records_released": word(_S_RECORDS_RELEASED),
            "bytes_written": word(_S_HEAD),
            "bytes_read": word(_S_READ),
            "bytes_released": word(_S_RELEASED),
            "full_waits": word(_S_FULL_WAITS),
            "doorbells": word(_S_DOORBELLS),
            "times_claimed": word(_S_TIMES_CLAIMED),
        }

    def close(self) -> None:
        """Unmap in this process. Writers and readers of this RingSet become unusable."""
        if self._closed:
            return
        self._closed = True
        for writer in list(self._writers):
            writer.detach()
        for reader in list(self._readers):
            reader.close()
        self._words.release()
        self._mm.close()

    def unlink(self) -> None:
        """Owner: remove segment, doorbell, lock and private directory (idempotent)."""
        private_dir = os.path.dirname(self.spec.doorbell_path)
        _ring_files.remove_ring_files(self.spec.shm_name, private_dir)


_SUMMED_COUNTERS = (
    "records_written",
    "records_read",
    "records_released",
    "bytes_written",
    "bytes_read",
    "bytes_released",
    "full_waits",
    "doorbells",
)


def _id_bytes(value) -> bytes | None:
    """A header id: raw bytes as they are, None as zeros, UUID text parsed; None if not one."""
    if value is None:
        return _ZERO_ID
    if not isinstance(value, str):
        return value
    try:
        return _uuid_bytes(value)
    except ValueError:
        return None


def _pack_padding(mm: mmap.mmap, start: int) -> None:
    RECORD_HEADER.pack_into(mm, start, KIND_PAD, 0, 0, 0, 0, b"", b"", 0)


class SlotWriter:
    """The producer side of one slot. Not thread-safe; belongs to the claiming process.

    Must not be used in a forked child: it writes into the parent's slot. Drop it in an
    ``os.register_at_fork(after_in_child=...)`` hook and call ``RingSet.writer()`` again.
    """

    def __init__(self, ring_set: RingSet, slot: int) -> None:
        spec = ring_set.spec
        words = ring_set._words
        self.slot = slot
        self.owner_pid = os.getpid()
        self.max_record_bytes = ring_set.max_record_bytes
        self._max_record_total = (spec.ring_bytes // 2) & ~7
        self._ring_set = ring_set
        self._words = words
        self._mm = ring_set._mm
        self._ring_bytes = spec.ring_bytes
        self._base = ring_set._data_offset + slot * spec.ring_bytes
        block = _GLOBAL_WORDS + slot * _SLOT_WORDS
        self._head_word = block + _S_HEAD
        self._records_word = block + _S_RECORDS_WRITTEN
        self._released_word = block + _S_RELEASED
        self._block = block
        self._head = words[self._head_word]
        self._records = words[self._records_word]
        # Where the current lap of the ring ends, and how a position maps into the mmap.
        self._lap_end = (self._head // spec.ring_bytes + 1) * spec.ring_bytes
        self._delta = self._base - (self._lap_end - spec.ring_bytes)
        # The producer re-reads the consumer's release position only when this stale limit
        # says the ring is full: one shared-memory load per lap, not per record.
        self._limit = words[self._released_word] + spec.ring_bytes
        self._use_project(b"")
        self._doorbell_path = spec.doorbell_path
        self._doorbell_fd = -1
        self._closed = False
        self._refused: bytes | None = None

    def _use_project(self, project: bytes) -> None:
        # Header and project are packed by one precompiled struct per project.
        self._project = project
        self._project_len = len(project)
        self._pack_header = struct.Struct(RECORD_HEADER.format + f"{len(project)}s").pack_into
        self._header_bytes = HEADER_BYTES + len(project)
        self._header_bytes_rounding = self._header_bytes + 7

    def try_write(self, kind, flags, call_id, trace_id, project, payload, aux) -> bool:
        """Append one record; False if there is not enough free space right now. Never blocks.

        Ids are 16 raw bytes, UUID text or None (zeros). Raises ValueError for a record that
        can never fit this ring or an id that is text but no UUID.
        """
        code = self.raw_write(kind, flags, call_id, trace_id, project, payload, aux)
        return code == WRITTEN or self.outcome(code, project, payload, call_id, trace_id)

    def raw_write(self, kind, flags, call_id, trace_id, project, payload, aux) -> int:
        """``try_write`` as a code, the hot path's form: WRITTEN, WRITTEN_RING (written; the
        caller must ring the doorbell), NO_ROOM, or a negative error (see ``outcome``)."""
        call_raw = _id_bytes(call_id)
        if call_raw is None:
            return BAD_CALL_ID
        trace_raw = _id_bytes(trace_id)
        if trace_raw is None:
            return BAD_TRACE_ID
        if self._write_bytes(kind, flags, call_raw, trace_raw, project, payload, aux):
            return WRITTEN
        return NO_ROOM

    def put(self, encoder, item, kind, flags, call_id, trace_id, project, max_payload,
            splice) -> int:
        """Encode ``item`` and write it: ``raw_write``'s codes or OVER_MAX_PAYLOAD (nothing
        written); with ``splice`` (an end) the record's aux is where the end's payload fields
        begin (``end_splice_offset``). The bytes of an item not written are kept for
        ``take_refused``, so a caller that waits or raises never encodes it twice."""
        payload = encoder.encode(item)
        if self._closed:  # a value's hook closed the writer: its slot is no longer ours
            raise ValueError("the writer was closed while the item was encoded")
        if len(payload) > max_payload:
            code = OVER_MAX_PAYLOAD
        else:
            aux = end_splice_offset(payload) if splice else 0
            code = self.raw_write(kind, flags, call_id, trace_id, project, payload, aux)
        if code not in (WRITTEN, WRITTEN_RING):
            self._refused = payload
        return code

    def fast_put(self, encoder, max_payload: int, projects: dict[str, bytes]):
        """The one-call hot path for wire Structs, ``put_item(item, kind, flags, splice)``,
        bound to ``encoder``, ``max_payload`` and the validated ``projects`` (str -> bytes,
        read live); None where there is none (pure Python, or no GIL to make it atomic).

        ``put_item`` returns ``put``'s code, ``(code, bytes)`` for an item it did not write
        (nothing is kept, so threads may share it), or UNPLANNED: nothing done, use ``put``.
        """
        return None

    def fast_calls(self) -> tuple[Any, Any]:
        """``call_start(start)`` / ``call_end(end)``: ``fast_put`` for the wire's exact start
        and end Structs, answer included (each does nothing until ``fast_put`` has bound the
        writer); ``(None, None)`` where there are none. Each returns the ``CallStartRes``
        (start) or True
        (end) when nothing is left to do, None when it did nothing (use the general path),
        else ``put_item``'s result to settle."""
        return None, None

    def take_refused(self) -> bytes | None:
        """The bytes of the last item ``put`` encoded but did not write (then None)."""
        payload, self._refused = self._refused, None
        return payload

    def outcome(self, code, project, payload, call_id, trace_id, what: str = "") -> bool:
        """What a code other than WRITTEN means: True written, False no room; raises on errors.

        ``what`` names the item in error messages (``start`` -> ``start.id``)."""
        if code == WRITTEN_RING:
            self._ring_doorbell()
            return True
        if code == NO_ROOM:
            return False
        if code == TOO_LARGE:
            self._raise_too_large(len(project), len(payload))
        if code in (BAD_CALL_ID, BAD_TRACE_ID):
            field, text = ("id", call_id) if code == BAD_CALL_ID else ("trace_id", trace_id)
            name = f"{what}.{field}" if what else field
            raise ValueError(f"{name}: {text!r} is not a UUID (8-4-4-4-12 hex, e.g. from uuid7())")
        if code == WRITTEN:
            return True
        raise ValueError(f"write code {code} has no outcome here")

    def _write_bytes(self, kind, flags, call_id, trace_id, project, payload, aux) -> bool:
        if project != self._project:
            self._use_project(project)
        payload_len = len(payload)
        head = self._head
        end = head + ((self._header_bytes_rounding + payload_len) & -8)
        if end > self._lap_end or end > self._limit:
            return self._try_write_slow(kind, flags, call_id, trace_id, project, payload, aux)
        start = head + self._delta
        mm = self._mm
        self._pack_header(
            mm, start, kind, flags, self._project_len, payload_len, aux, call_id, trace_id,
            _monotonic_ns(), project,
        )  # fmt: skip
        start += self._header_bytes
        mm[start : start + payload_len] = payload
        self._head = end
        words = self._words
        words[self._head_word] = end  # publish: the record is visible from here on
        self._records += 1
        words[self._records_word] = self._records
        if words[_G_SLEEPING]:
            self._ring_doorbell()
        return True

    def _try_write_slow(self, kind, flags, call_id, trace_id, project, payload, aux) -> bool:
        """The record does not fit this lap, or the cached limit says the ring is full."""
        size = (self._header_bytes_rounding + len(payload)) & -8
        if size > self._max_record_total:
            self._raise_too_large(len(project), len(payload))
        head = self._head
        wraps = head + size > self._lap_end
        end = self._lap_end + size if wraps else head + size
        if end > self._limit:
            self._limit = self._words[self._released_word] + self._ring_bytes
            if end > self._limit:
                return False
        if wraps:
            self._skip_to_next_lap()
        return self._write_bytes(kind, flags, call_id, trace_id, project, payload, aux)

    def _skip_to_next_lap(self) -> None:
        # The padding becomes visible with the head published after the next record.
        tail_room = self._lap_end - self._head
        if tail_room >= HEADER_BYTES:
            _pack_padding(self._mm, self._head + self._delta)
        self._head = self._lap_end
        self._lap_end += self._ring_bytes
        self._delta -= self._ring_bytes

    def write(self, kind, flags, call_id, trace_id, project, payload, aux, timeout_s=None) -> bool:
        """Append one record, waiting for space up to ``timeout_s`` (None: forever).

        Spins briefly, then sleeps with exponential backoff. False on timeout.
        """
        if self.try_write(kind, flags, call_id, trace_id, project, payload, aux):
            return True
        self._words[self._block + _S_FULL_WAITS] += 1
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        backoff_s = _FIRST_BACKOFF_S
        attempt = 0
        while not self.try_write(kind, flags, call_id, trace_id, project, payload, aux):
            attempt += 1
            if attempt <= _SPIN_TRIES:
                os.sched_yield()
                continue
            remaining_s = None if deadline is None else deadline - time.monotonic()
            if remaining_s is not None and remaining_s <= 0:
                return False
            time.sleep(backoff_s if remaining_s is None else min(backoff_s, remaining_s))
            backoff_s = min(backoff_s * 2, _MAX_BACKOFF_S)
        return True

    def _raise_too_large(self, project_len: int, payload_len: int) -> None:
        raise ValueError(
            f"record of {payload_len} payload + {project_len} project bytes does not fit a "
            f"{self._ring_bytes}-byte ring (max_record_bytes is {self.max_record_bytes})"
        )

    def _ring_doorbell(self) -> None:
        # Clear the flag first so the records that follow, until the consumer sleeps again,
        # do not each make a syscall; two producers racing here just ring twice.
        words = self._words
        words[_G_SLEEPING] = 0
        words[self._block + _S_DOORBELLS] += 1
        if self._doorbell_fd < 0:
            try:
                self._doorbell_fd = os.open(self._doorbell_path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:  # ENXIO: no consumer has the FIFO open (yet)
                if exc.errno in (errno.ENXIO, errno.ENOENT):
                    return
                raise
        try:
            os.write(self._doorbell_fd, b"\x01")
        except BlockingIOError:  # FIFO full: the consumer has plenty of wakeups pending
            pass
        except BrokenPipeError:  # the consumer went away; reopen next time
            os.close(self._doorbell_fd)
            self._doorbell_fd = -1

    def detach(self) -> None:
        """The ring set is closing in this process: drop the doorbell fd (and, natively, the
        mapping's buffer). The slot itself stays as it is."""
        self._close_doorbell()

    def _close_doorbell(self) -> None:
        if self._doorbell_fd >= 0:
            os.close(self._doorbell_fd)
            self._doorbell_fd = -1

    def close(self) -> None:
        """Mark the slot closing; the reader frees it once everything is released.

        A no-op in any process other than the one that claimed the slot.
        """
        if self._closed or os.getpid() != self.owner_pid:
            return
        self._closed = True
        self._words[self._block + _S_STATE] = CLOSING
        self._close_doorbell()


def _calls_are_atomic() -> bool:
    """Each C call holds the GIL throughout; not so in a free-threaded build."""
    gil = getattr(sys, "_is_gil_enabled", None)
    return gil is None or gil()


class NativeSlotWriter(SlotWriter):
    """The same writer with framing, copy and publish done by ``engine.native._native`` (C).

    Writes the same bytes; publishes the head with release semantics and fences before it
    looks at the consumer's sleeping flag (no lost wakeup, also on weakly ordered CPUs).
    """

    def __init__(self, ring_set: RingSet, slot: int) -> None:
        super().__init__(ring_set, slot)
        self._native = _native.RingWriter(
            ring_set._mm, self._base, self._ring_bytes, self._head_word * _U64,
            self._records_word * _U64, self._released_word * _U64, _G_SLEEPING * _U64,
        )
        self.raw_write = self._native.try_write  # same codes as SlotWriter.raw_write
        self.put = self._native.put  # same codes as SlotWriter.put
        self.take_refused = self._native.take_refused

    def fast_put(self, encoder, max_payload: int, projects: dict[str, bytes]):
        if not _calls_are_atomic():
            return None
        self._native.bind(encoder, max_payload, projects)
        return self._native.put_item

    def fast_calls(self) -> tuple[Any, Any]:
        if not _calls_are_atomic():
            return None, None
        return self._native.call_start, self._native.call_end  # None until bind()

    def close(self) -> None:
        super().close()
        if self._closed:  # a put_item already fetched by another thread must not write
            self._native.release()

    def detach(self) -> None:
        super().detach()
        self._native.release()


class RingReader:
    """The single consumer: reads round-robin over slots, releases after acknowledgement."""

    def __init__(self, ring_set: RingSet) -> None:
        spec = ring_set.spec
        self._ring_set = ring_set
        self._words = ring_set._words
        self._mm = ring_set._mm
        self._ring_bytes = spec.ring_bytes
        self._max_slots = spec.max_slots
        self._data_offset = ring_set._data_offset
        self._read = [self._word(s, _S_RELEASED) for s in range(spec.max_slots)]
        for slot, position in enumerate(self._read):
            self._set_word(slot, _S_READ, position)
        # per slot, [end positions, lo, hi] runs read but not yet released, to count releases
        self._unreleased: list[list[list]] = [[] for _ in range(spec.max_slots)]
        self._records_read = [self._word(s, _S_RECORDS_READ) for s in range(spec.max_slots)]
        self._claims_seen = -1
        self._active: list[int] = []
        # > 0: a start directly followed by its own end is read as one KIND_SPLICED record
        # of at most this many payload bytes (C accelerator only; see engine.native._native.parse)
        self.splice_max_bytes = 0
        self.last_read_records = 0  # ring records the last read() took (a splice is two)
        self._next_index = 0
        self._doorbell_fd = os.open(spec.doorbell_path, os.O_RDWR | os.O_NONBLOCK)
        # O_RDWR: the FIFO always has a writer, so it never reports hang-up (EOF) to poll.
        self._close_doorbell = weakref.finalize(self, os.close, self._doorbell_fd)
        self._fence_lock = threading.Lock()

    def _word(self, slot: int, word: int) -> int:
        return self._words[_GLOBAL_WORDS + slot * _SLOT_WORDS + word]

    def _set_word(self, slot: int, word: int, value: int) -> None:
        self._words[_GLOBAL_WORDS + slot * _SLOT_WORDS + word] = value

    def _active_slots(self) -> list[int]:
        claims = self._words[_G_CLAIMS]
        if claims != self._claims_seen:
            self._claims_seen = claims
            self._refresh_active()
        return self._active

    def _refresh_active(self) -> None:
        self._active = [s for s in range(self._max_slots) if self._word(s, _S_STATE) != FREE]

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
        head = self._word(slot, _S_HEAD)
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
                                     self.splice_max_bytes)
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
            self._set_word(slot, _S_RECORDS_READ, self._records_read[slot])
        self._set_word(slot, _S_READ, position)

    def release(self, slot: int, end_pos: int) -> None:
        """Free ring space up to ``end_pos`` (monotone; never past the read position)."""
        if end_pos <= self._word(slot, _S_RELEASED):
            return
        if end_pos > self._read[slot]:
            raise ValueError(
                f"slot {slot}: release to {end_pos} is past the read position {self._read[slot]}"
            )
        done = _drop_released(self._unreleased[slot], slot, end_pos)
        self._set_word(slot, _S_RECORDS_RELEASED, self._word(slot, _S_RECORDS_RELEASED) + done)
        # Padding after the last record read belongs to no record: once everything read is
        # released, release it too, or it would keep a closed slot from being reaped.
        self._set_word(slot, _S_RELEASED, end_pos if self._unreleased[slot] else self._read[slot])

    def rewind(self) -> None:
        """read := released for every slot: unacknowledged records will be read again."""
        for slot in range(self._max_slots):
            position = self._word(slot, _S_RELEASED)
            self._read[slot] = position
            self._set_word(slot, _S_READ, position)
            self._unreleased[slot].clear()

    def heads(self) -> list[int]:
        return [self._word(s, _S_HEAD) for s in range(self._max_slots)]

    def released(self) -> list[int]:
        return [self._word(s, _S_RELEASED) for s in range(self._max_slots)]

    def reap(self) -> list[int]:
        """Free slots whose producer closed or died and whose data is all released."""
        freed = []
        for slot in range(self._max_slots):
            state = self._word(slot, _S_STATE)
            if state == ACTIVE and not self._producer_alive(slot):
                state = DEAD
                self._set_word(slot, _S_STATE, DEAD)
            if state in (CLOSING, DEAD) and self._drained(slot):
                self._set_word(slot, _S_STATE, FREE)
                freed.append(slot)
        if freed:
            self._refresh_active()
        return freed

    def _producer_alive(self, slot: int) -> bool:
        return _ring_files.is_alive(self._word(slot, _S_PID), self._word(slot, _S_START_TICKS))

    def _drained(self, slot: int) -> bool:
        return self._word(slot, _S_RELEASED) == self._word(slot, _S_HEAD)

    def fileno(self) -> int:
        """The doorbell fd: readable when a producer rang (for ``loop.add_reader``)."""
        return self._doorbell_fd

    def pending(self) -> bool:
        """Whether any slot has records not yet read."""
        return any(self._word(s, _S_HEAD) != self._read[s] for s in self._active_slots())

    def prepare_sleep(self) -> bool:
        """Tell producers to ring the doorbell; False (and no flag) if data is already pending."""
        self._words[_G_SLEEPING] = 1
        # A locked instruction orders the flag store before the head loads below.
        with self._fence_lock:
            pass
        if self.pending():
            self._words[_G_SLEEPING] = 0
            return False
        return True

    def clear_doorbell(self) -> None:
        """Drain the doorbell FIFO and clear the sleeping flag."""
        self._words[_G_SLEEPING] = 0
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
_monotonic_ns = time.monotonic_ns
