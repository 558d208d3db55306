"""The writer half of the ring set: a producer's slot, in the user's process (microseconds).

The producer writes the bytes, then publishes its head; the consumer reads up to the head
it loaded, and frees space only by publishing ``released``. Nothing on the write path takes
a lock or makes a syscall, except the doorbell: a byte written to a FIFO when the consumer
has said it sleeps. The C writer (``NativeSlotWriter``, engine/native/_writer.c) publishes with
a release store and fences before it reads the sleeping flag, so it is correct on any CPU. The
pure-Python fallback relies on the ordering of plain stores (x86-64 TSO); there a store and a
later load may still pass each other, so a wakeup can be lost in a window of nanoseconds --
the consumer sleeps with a bounded timeout (tens of ms) as a safety net either way.
"""

from __future__ import annotations

import errno
import mmap
import os
import struct
import sys
import time
from typing import TYPE_CHECKING, Any

from engine.native._accel import native as _native
from engine.ring._layout import (
    BAD_CALL_ID,
    BAD_TRACE_ID,
    CLOSING,
    G_SLEEPING,
    GLOBAL_WORDS,
    HEADER_BYTES,
    KIND_PAD,
    MAX_PROJECT_BYTES,
    NO_ROOM,
    OVER_MAX_PAYLOAD,
    RECORD_HEADER,
    S_DOORBELLS,
    S_FULL_WAITS,
    S_HEAD,
    S_RECORDS_WRITTEN,
    S_RELEASED,
    S_STATE,
    SLOT_WORDS,
    TOO_LARGE,
    U64,
    WRITTEN,
    WRITTEN_RING,
)
from engine.wire._codec import uuid_bytes as _uuid_bytes
from engine.wire.calls import end_splice_offset

if TYPE_CHECKING:
    from engine.ring._set import RingSet

_ZERO_ID = bytes(16)
# A full ring waits for the sender, which shares the few cores with the producers: yield
# once, then sleep (spinning producers steal the CPU the sender needs to free space).
_SPIN_TRIES = 1
_FIRST_BACKOFF_S = 100e-6
_MAX_BACKOFF_S = 1e-3  # a sleeping producer notices freed space within 1 ms


# UUID text -> its 16 bytes, for the ids written last: an end names its start's id, the
# calls of a trace share its trace id (the C writer keeps such a cache too)
_recent_ids: dict[str, bytes] = {}
_MAX_RECENT_IDS = 64


def _id_bytes(value) -> bytes | None:
    """A header id: raw bytes as they are, None as zeros, UUID text parsed; None if not one."""
    if value is None:
        return _ZERO_ID
    if not isinstance(value, str):
        return value
    raw = _recent_ids.get(value)
    if raw is None:
        try:
            raw = _uuid_bytes(value)
        except ValueError:
            return None
        if len(_recent_ids) >= _MAX_RECENT_IDS:
            _recent_ids.clear()
        _recent_ids[value] = raw
    return raw


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
        self._max_record_total = spec.ring_bytes & ~7  # one record may take the whole ring
        # ... but records up to a quarter of it stay in each lap's first half: while no item
        # is larger a ring touches half its memory, and any of them still fits an empty ring
        # at once (as records up to half of it did before the whole ring was allowed)
        self._half = (spec.ring_bytes // 2) & ~7
        self._quarter = (spec.ring_bytes // 4) & ~7
        # The claim reserved that first half (RingSet.reserve_slot): the producer writes
        # payloads up to reserved_record_bytes, and a larger one first reserves the rest
        # (reserve_whole), so no write lands on a page a full tmpfs has none for.
        self.whole_reserved = False
        self.reserved_record_bytes = self._quarter - HEADER_BYTES - MAX_PROJECT_BYTES
        self._ring_set = ring_set
        self._words = words
        self._mm = ring_set._mm
        self._ring_bytes = spec.ring_bytes
        self._base = ring_set._data_offset + slot * spec.ring_bytes
        block = GLOBAL_WORDS + slot * SLOT_WORDS
        self._head_word = block + S_HEAD
        self._records_word = block + S_RECORDS_WRITTEN
        self._released_word = block + S_RELEASED
        self._block = block
        self._head = words[self._head_word]
        self._records = words[self._records_word]
        # Where the current lap of the ring ends, and how a position maps into the mmap.
        self._lap_end = (self._head // spec.ring_bytes + 1) * spec.ring_bytes
        self._half_end = self._lap_end - self._half  # where this lap's small records stop
        self._delta = self._base - (self._lap_end - spec.ring_bytes)
        # The producer re-reads the consumer's release position only when this stale limit
        # says the ring is full: one shared-memory load per lap, not per record.
        self._limit = words[self._released_word] + spec.ring_bytes
        self._use_project(b"")
        # this slot's sender: its sleeping flag and its doorbell
        self._sleeping_word = G_SLEEPING + spec.shard_of(slot)
        self._doorbell_path = spec.doorbell_of(spec.shard_of(slot))
        self._doorbell_fd = -1
        self._closed = False
        # set (without the lock a waiting write holds) when the engine closes: a write
        # waiting for room stops waiting, so the close does not wait on it for ever
        self.abandoned = False
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
        if project != self._project:
            self._use_project(project)
        end = self._head + ((self._header_bytes_rounding + len(payload)) & -8)
        if end > self._half_end or end > self._limit:
            written = self._try_write_slow(kind, flags, call_raw, trace_raw, project, payload,
                                           aux)
        else:
            written = self._put_record(end, kind, flags, call_raw, trace_raw, project, payload,
                                       aux)
        return WRITTEN if written else NO_ROOM

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

    def _put_record(self, end, kind, flags, call_id, trace_id, project, payload, aux) -> bool:
        """Frame, copy and publish the record at the head (its room was checked)."""
        payload_len = len(payload)
        head = self._head
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
        if words[self._sleeping_word]:
            self._ring_doorbell()
        return True

    def _try_write_slow(self, kind, flags, call_id, trace_id, project, payload, aux) -> bool:
        """The record does not fit this lap, or the cached limit says the ring is full."""
        size = (self._header_bytes_rounding + len(payload)) & -8
        if size > self._max_record_total:
            self._raise_too_large(len(project), len(payload))
        head = self._head
        wraps = head + size > (self._lap_end if size > self._quarter else self._half_end)
        end = self._lap_end + size if wraps else head + size
        if end > self._limit:
            self._limit = self._words[self._released_word] + self._ring_bytes
            if end > self._limit:
                if wraps and self._lap_end <= self._limit:  # the padding's room is free
                    self._publish_padding()  # (a record may need it released too)
                return False
        if wraps:
            self._skip_to_next_lap()
            end = self._head + size
        return self._put_record(end, kind, flags, call_id, trace_id, project, payload, aux)

    def _publish_padding(self) -> None:
        """Skip to the next lap and publish the head past the padding: the reader releases
        padding once everything before it is released, so a record larger than the ring
        minus the padding can still be written (it waits for the whole ring to drain)."""
        self._skip_to_next_lap()
        words = self._words
        words[self._head_word] = self._head
        if words[self._sleeping_word]:
            self._ring_doorbell()

    def _skip_to_next_lap(self) -> None:
        # The padding becomes visible with the next head published (the next record's).
        tail_room = self._lap_end - self._head
        if tail_room >= HEADER_BYTES:
            _pack_padding(self._mm, self._head + self._delta)
        self._head = self._lap_end
        self._lap_end += self._ring_bytes
        self._half_end += self._ring_bytes
        self._delta -= self._ring_bytes

    def records_written(self) -> int:
        """Records committed to this slot so far (the shared counter the native path keeps
        too): whether a write interrupted by a signal got in."""
        return self._words[self._records_word]

    def write(self, kind, flags, call_id, trace_id, project, payload, aux, timeout_s=None) -> bool:
        """Append one record, waiting for space up to ``timeout_s`` (None: forever) or
        until :attr:`abandoned` is set.

        Spins briefly, then sleeps with exponential backoff. False on timeout or abandon.
        """
        if self.try_write(kind, flags, call_id, trace_id, project, payload, aux):
            return True
        self._words[self._block + S_FULL_WAITS] += 1
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        backoff_s = _FIRST_BACKOFF_S
        attempt = 0
        while not self.try_write(kind, flags, call_id, trace_id, project, payload, aux):
            attempt += 1
            if attempt <= _SPIN_TRIES:
                os.sched_yield()
                continue
            remaining_s = None if deadline is None else deadline - time.monotonic()
            if (remaining_s is not None and remaining_s <= 0) or self.abandoned:
                return False
            time.sleep(backoff_s if remaining_s is None else min(backoff_s, remaining_s))
            backoff_s = min(backoff_s * 2, _MAX_BACKOFF_S)
        return True

    def reserve_whole(self) -> None:
        """Reserve the rest of this slot's ring, where records larger than a quarter of it
        go; then ``reserved_record_bytes`` is ``max_record_bytes``. Raises
        ``SharedMemoryFull``."""
        if not self.whole_reserved:
            self._ring_set.reserve_slot(self.slot, whole=True)
            self.whole_reserved = True
            self.reserved_record_bytes = self.max_record_bytes

    def _raise_too_large(self, project_len: int, payload_len: int) -> None:
        raise ValueError(
            f"record of {payload_len} payload + {project_len} project bytes does not fit a "
            f"{self._ring_bytes}-byte ring (max_record_bytes is {self.max_record_bytes})"
        )

    def _ring_doorbell(self) -> None:
        # Clear the flag first so the records that follow, until the consumer sleeps again,
        # do not each make a syscall; two producers racing here just ring twice.
        words = self._words
        words[self._sleeping_word] = 0
        words[self._block + S_DOORBELLS] += 1
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
        self._words[self._block + S_STATE] = CLOSING
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
            ring_set._mm, self._base, self._ring_bytes, self._head_word * U64,
            self._records_word * U64, self._released_word * U64, self._sleeping_word * U64,
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



_monotonic_ns = time.monotonic_ns
