"""The shared-memory ring set: one single-producer/single-consumer ring per producer slot.

One segment holds them all (its layout: ``engine.ring._layout``); producers write through a
``SlotWriter`` (``_writer``), the sender reads through the one ``RingReader`` (``_reader``).

Slots: a producer claims a free slot under ``flock`` (cold path) and records its pid and
start time. A slot is freed by the reader in ``reap()``: once its producer closed or died
*and* everything it wrote has been released. A ``SlotWriter`` belongs to the process that
claimed it: a forked child must drop the inherited one (``os.register_at_fork``) and claim
its own; ``SlotWriter.owner_pid`` says whose it is, and ``close()`` in another process is a
no-op so a child cannot free its parent's slot.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import tempfile
import time
import weakref
from typing import Any

from engine.common._errors import SharedMemoryFull
from engine.common._reserve import NO_ROOM_ERRNOS, reserve
from engine.native._accel import native as _native
from engine.ring import _files as ring_files
from engine.ring import _orphans
from engine.ring._layout import (
    ACTIVE,
    CLOSING,
    DEAD,
    FREE,
    G_CLAIMS,
    G_MAGIC,
    G_MAX_SLOTS,
    G_OWNER_PID,
    G_RING_BYTES,
    G_VERSION,
    GLOBAL_WORDS,
    HEADER_BYTES,
    MAGIC,
    MAX_PROJECT_BYTES,
    MAX_SENDERS,
    MIN_RING_BYTES,
    S_DOORBELLS,
    S_FULL_WAITS,
    S_HEAD,
    S_PID,
    S_READ,
    S_RECORDS_READ,
    S_RECORDS_RELEASED,
    S_RECORDS_WRITTEN,
    S_RELEASED,
    S_START_TICKS,
    S_STATE,
    S_TIMES_CLAIMED,
    SLOT_WORDS,
    VERSION,
    RingSpec,
    data_offset,
)
from engine.ring._reader import RingReader
from engine.ring._writer import NativeSlotWriter, SlotWriter

_log = logging.getLogger("engine.ring")


class NoFreeSlot(RuntimeError):
    """Every ring slot is claimed by a live producer process (or one whose data is not
    drained yet)."""


_STATE_NAMES = {FREE: "free", ACTIVE: "active", CLOSING: "closing", DEAD: "dead"}
_MIB = 1 << 20
SLOT_WAIT_SAID_S = 1.0  # a claim waiting for a free slot longer than this is logged


def _reserve(what: str, segment: str, fn: Any, *args: Any) -> None:
    """``fn(*args)``, a reservation in the file ``segment``; no room there raises
    :class:`SharedMemoryFull` naming where, how much and what to do (any other OS error is
    raised as it is)."""
    try:
        fn(*args)
    except OSError as exc:
        if exc.errno not in NO_ROOM_ERRNOS:
            raise
        raise _no_room(what, os.path.dirname(segment), args[-1], exc) from None


def _no_room(what: str, where: str, need_bytes: int, error: OSError) -> SharedMemoryFull:
    try:
        st = os.statvfs(where)
        left = (f"; {st.f_bavail * st.f_frsize / _MIB:,.1f} MiB free of "
                f"{st.f_blocks * st.f_frsize / _MIB:,.0f} MiB")
    except OSError:
        left = ""
    if where == ring_files.SEGMENT_DIR:
        remedy = (f"give {where} more room (a container's default is 64 MiB: `docker run "
                  "--shm-size=1g`; Kubernetes: an emptyDir volume with medium: Memory mounted "
                  "there)")
    else:  # rings on disk (_rings_on_disk): the temp dir's
        remedy = f"free space on the disk of {where} (the temp dir, TMPDIR)"
    return SharedMemoryFull(
        f"no room in {where} for {what} ({need_bytes / _MIB:,.1f} MiB: "
        f"{error.strerror or error}{left}): {remedy} or lower ring_bytes (each producer "
        "process reserves ring_bytes there when it first traces)")


def shm_room(slot_ring_bytes: int, max_slots: int) -> tuple[int, int] | None:
    """(rings /dev/shm has room for now, rings an engine should be able to hold there):
    each producer reserves half its slot's ring (``reserve_slot``; ``ring_bytes``), and an
    engine should hold ``max(8, 2 x cores)`` of them, at most ``max_slots``. None where
    there is no /dev/shm or its room cannot be read."""
    if tempfile.gettempdir() == ring_files.SEGMENT_DIR:
        return None  # no /dev/shm here: segments are files in the temp dir anyway
    free = ring_files.free_bytes()
    if free is None:
        return None
    wanted = min(max_slots, max(8, 2 * (os.cpu_count() or 1)))
    return free // ((slot_ring_bytes // 2) & ~7), wanted


def _rings_on_disk(spec: RingSpec) -> bool:
    """Whether this ring set's segment goes in its private directory (page cache on the
    temp dir's disk) because /dev/shm has room for fewer producer rings than the engine
    should hold (:func:`shm_room`). A container's default 64 MiB holds three of 16 MiB;
    there, a fourth producer would find no room (SharedMemoryFull). Said once, with how to
    keep the rings in /dev/shm."""
    room = shm_room(spec.ring_bytes, spec.max_slots)
    if room is None or room[0] >= room[1]:
        return False
    _log.warning(
        "%s has room for %d of the %d producer rings of %.0f MiB (ring_bytes) this engine "
        "should hold: its rings are in %s instead (the page cache of a file there; to keep "
        "them in %s, give it more room: `docker run --shm-size=1g`, or in Kubernetes an "
        "emptyDir with medium: Memory mounted on it)", ring_files.SEGMENT_DIR, *room,
        spec.ring_bytes / 2 / _MIB, ring_files.disk_segment_path(spec.shm_name),
        ring_files.SEGMENT_DIR)
    return True


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
        self._words = memoryview(mm)[: data_offset(spec.max_slots)].cast("Q")
        self._data_offset = data_offset(spec.max_slots)
        self._closed = False
        # native writers hold the mapping's buffer: given back before the mapping closes
        self._writers: weakref.WeakSet[SlotWriter] = weakref.WeakSet()
        self._readers: weakref.WeakSet[RingReader] = weakref.WeakSet()  # their doorbell fds

    @classmethod
    def create(cls, ring_bytes: int, max_slots: int, senders: int = 1,
               on_disk: bool | None = None) -> RingSet:
        """Create a ring set owned by this process, read by ``senders`` sender processes;
        first removes leftovers of dead owners. ``on_disk``: the segment in the private
        directory instead of /dev/shm (None: where /dev/shm is too small, ``_rings_on_disk``)."""
        _validate(ring_bytes, max_slots)
        if not 1 <= senders <= min(MAX_SENDERS, max_slots):
            raise ValueError(f"senders must be 1..{min(MAX_SENDERS, max_slots)}, got {senders}")
        _orphans.find_orphans()  # removes the empty ones, keeps the rest for recovery
        private_dir = ring_files.make_private_dir()
        name = os.path.basename(private_dir)
        spec = RingSpec(
            shm_name=name,
            ring_bytes=ring_bytes,
            max_slots=max_slots,
            **ring_files.dir_paths(private_dir),
            senders=senders,
        )
        try:
            return cls._create_files(spec, _rings_on_disk(spec) if on_disk is None else on_disk)
        except BaseException:
            ring_files.remove_ring_files(name, private_dir)
            raise

    @classmethod
    def _create_files(cls, spec: RingSpec, on_disk: bool = False) -> RingSet:
        ring_files.make_dir_files(spec)
        size = data_offset(spec.max_slots) + spec.ring_bytes * spec.max_slots
        fd = ring_files.create_segment(spec.shm_name, size, on_disk)
        try:
            # the control words, written by every process from the start
            _reserve("a ring set's control block", ring_files.spec_segment_path(spec), reserve, fd,
                     0, data_offset(spec.max_slots))
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        ring_set = cls(spec, mm, owner=True)
        words = ring_set._words
        words[G_VERSION] = VERSION
        words[G_RING_BYTES] = spec.ring_bytes
        words[G_MAX_SLOTS] = spec.max_slots
        words[G_OWNER_PID] = os.getpid()
        words[G_MAGIC] = MAGIC
        return ring_set

    @classmethod
    def attach(cls, spec: RingSpec) -> RingSet:
        """Map an existing ring set (any process: forked, spawned, forkserver)."""
        fd = os.open(ring_files.spec_segment_path(spec), os.O_RDWR)
        try:
            mm = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        ring_set = cls(spec, mm, owner=False)
        words = ring_set._words
        if words[G_MAGIC] != MAGIC or words[G_RING_BYTES] != spec.ring_bytes:
            ring_set.close()
            raise ValueError(f"segment {spec.shm_name} does not match its spec")
        return ring_set

    def __reduce__(self):
        return (RingSet.attach, (self.spec,))

    @property
    def max_record_bytes(self) -> int:
        """Largest payload that always fits, with any project of up to MAX_PROJECT_BYTES:
        one record may take the whole ring (it waits for the ring to drain)."""
        return (self.spec.ring_bytes & ~7) - HEADER_BYTES - MAX_PROJECT_BYTES

    def writer(self, wait_s: float = 0.0) -> SlotWriter:
        """Claim a free slot for this process (cold path: takes the slot lock). When every
        slot is taken, wait up to ``wait_s`` for the sender to free one whose producer
        ended (it does once the slot's data is drained), then raise ``NoFreeSlot``."""
        started = time.monotonic()
        deadline = started + wait_s
        pause_s, said = 0.005, False
        while True:
            try:
                slot = self._claim_slot()
                break
            except NoFreeSlot:
                now = time.monotonic()
                if now + pause_s > deadline:
                    raise
                # a recycled pool worker waits for its predecessor's slot to be drained
                # (the sender looks every 0.1 s): said only when the wait is long
                if not said and now - started >= SLOT_WAIT_SAID_S:
                    _log.warning("all %d ring slots are in use; waited %.1f s so far, up to "
                                 "%.1f s, for one to be freed (each process that traces "
                                 "holds one until it ends)", self.spec.max_slots,
                                 now - started, wait_s)  # fmt: skip
                    said = True
                time.sleep(pause_s)
                pause_s = min(pause_s * 2, 0.1)
        writer = (NativeSlotWriter if _native else SlotWriter)(self, slot)
        self._writers.add(writer)
        return writer

    def reader(self, shard: int = 0, shards: int = 1) -> RingReader:
        """The consumer of the slots of sender ``shard`` of ``shards`` (by default one
        consumer of every slot; a sender of ``spec.senders`` passes its own). There must be
        only one per slot at a time; it starts at the release positions."""
        reader = RingReader(self, shard, shards)
        self._readers.add(reader)
        return reader

    def reserve_slot(self, slot: int, whole: bool = False) -> None:
        """Reserve the memory of ``slot``'s ring: the first half, where records up to a
        quarter of the ring stay (all a ring touches while no item is larger), or the whole
        ring. Raises :class:`SharedMemoryFull` when there is no room."""
        ring_bytes = self.spec.ring_bytes
        half = (ring_bytes // 2) & ~7
        start, length = (half, ring_bytes - half) if whole else (0, half)
        what = "the rest of this process's ring" if whole else "this process's ring"
        segment = ring_files.spec_segment_path(self.spec)
        _reserve(what, segment, ring_files.reserve_in_file, segment,
                 self._data_offset + slot * ring_bytes + start, length)

    def _claim_slot(self) -> int:
        pid = os.getpid()
        start_ticks = ring_files.process_start_ticks(pid) or 0
        with self._slot_lock():
            words = self._words
            for slot in range(self.spec.max_slots):
                base = GLOBAL_WORDS + slot * SLOT_WORDS
                if words[base + S_STATE] == FREE:
                    # its memory first: a write into an unreserved page of a full tmpfs is
                    # a SIGBUS; with none to be had, nothing is claimed (the error says why)
                    self.reserve_slot(slot)
                    words[base + S_PID] = pid
                    words[base + S_START_TICKS] = start_ticks
                    words[base + S_TIMES_CLAIMED] += 1
                    words[base + S_STATE] = ACTIVE
                    words[G_CLAIMS] += 1
                    return slot
        raise NoFreeSlot(f"all {self.spec.max_slots} ring slots are in use")

    def slot_lock(self):
        """The ring set's claim lock (a flock across processes), for the rare cross-process
        update that must not race: a claim, a count of calls a slot-less process dropped."""
        return self._slot_lock()

    @contextlib.contextmanager
    def _slot_lock(self):
        fd = os.open(self.spec.lock_path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def _slot_word(self, slot: int, word: int) -> int:
        return self._words[GLOBAL_WORDS + slot * SLOT_WORDS + word]

    def pressure(self, slots: range) -> tuple[int, int]:
        """Of ``slots``: the least room a writer has in its ring now (bytes), and how many
        times their writers found their ring full, in all (any process, no side effects)."""
        lap, word = self.spec.ring_bytes, self._slot_word
        room = min((lap - (word(s, S_HEAD) - word(s, S_RELEASED)) for s in slots), default=lap)
        return room, sum(word(s, S_FULL_WAITS) for s in slots)

    def positions(self) -> tuple[list[int], list[int]]:
        """Per slot (head, release position): what flush() compares; no side effects."""
        heads = [self._slot_word(s, S_HEAD) for s in range(self.spec.max_slots)]
        released = [self._slot_word(s, S_RELEASED) for s in range(self.spec.max_slots)]
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
            "state": _STATE_NAMES[word(S_STATE)],
            "pid": word(S_PID),
            "records_written": word(S_RECORDS_WRITTEN),
            "records_read": word(S_RECORDS_READ),
            "records_released": word(S_RECORDS_RELEASED),
            "bytes_written": word(S_HEAD),
            "bytes_read": word(S_READ),
            "bytes_released": word(S_RELEASED),
            "full_waits": word(S_FULL_WAITS),
            "doorbells": word(S_DOORBELLS),
            "times_claimed": word(S_TIMES_CLAIMED),
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
        ring_files.remove_ring_files(self.spec.shm_name, private_dir)


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

