"""A small shared control block: sender statistics and requests between processes.

One file in the ring set's private directory, mapped by every process that needs it:
each sender publishes its counters and gauges in a block of its own (single writer),
producers publish their own per-slot counters (single writer per slot), the owner and any
tracer post a flush request.
Every cell is an aligned int64, so readers in other processes never see torn values on
the 64-bit platforms we run on.
"""

from __future__ import annotations

import mmap
import os
from typing import Any

from engine.common._reserve import NO_ROOM_ERRNOS, reserve

SENDER_FIELDS = (
    "sender_pid",
    "sender_heartbeat_ns",
    "sender_restarts",
    "flush_request_ns",
    "shutdown_request",  # the owner's close(): its deadline, monotonic ns (0: none)
    "items_read",
    "items_sent",
    "bytes_sent_raw",
    "bytes_sent_wire",
    "items_acked",
    "bytes_acked",
    "batches_sent",
    "batches_acked",
    "requests_sent",
    "splits_413",
    "splits_422",
    "retries",
    "rejected_bytes_413",
    "dead_letters",
    "dead_too_large",
    "dead_invalid",
    "dead_http",
    "dead_deadline",
    "dead_shutdown",
    "spooled_items",
    "spooled_batches",
    "replayed_batches",
    # items a full disk (ENOSPC, EDQUOT, EFBIG; disk_keep_free_bytes) kept from the spool/dead letters
    "unpersisted_no_space",
    "unpersisted_unwritable",  # items another OS error kept from them (EACCES, EROFS, ENOTDIR, ...)
    "unpersisted_spool_full",  # items the spool's bound (spool_max_bytes) kept from it
    "parked_items",  # gauge: items held in memory (not released) until their file can be written
    "kept_in_ring",  # items a sender left in shared memory at exit, for recovery
    "orphans_adopted",  # ring sets of dead engines this engine started recovering
    "orphan_records",  # the records they held
    "untraced_no_shared_memory",  # calls of processes that found no room in /dev/shm for a ring slot
    "eager_starts",
    "completes_spliced",
    "upsert_refused",  # upsert batches of starts and ends sent alone the server refused (then v2 requests)
    "in_flight_requests",
    "in_flight_bytes",
    "concurrency_limit",
    "size_target_bytes",
    "complete_mode",
    "compressing",
    "pending_starts",
    "latency_p50_us",
    "latency_p90_us",
    "latency_p99_us",
    "latency_max_us",
    "untraced_no_slot",  # calls of processes that found every ring slot (max_slots) taken
    # the sender's own spool replay: spooled items (by it or an earlier engine) it delivered,
    # and those the server refused, moved to the dead letters (counted in dead_letters too:
    # what left the rings is items_acked + dead_letters - spool_refused_items + spooled_items)
    "spool_replayed_items",
    "spool_refused_items",
    "splits_500",  # batches split to find a call the server answers 500 to (_isolate_500)
)
SLOT_FIELDS = (
    "dropped_full", "raised_full", "too_large", "stringified", "blocked_ms",
    # values the producer replaced or wrote in another form (engine/producer/_sanitise.py)
    "sanitised_cycle", "sanitised_bad_string", "sanitised_unencodable", "sanitised_oversized",
    "sanitised_nonfinite", "sanitised_bytes", "sanitised_timestamp", "sanitised_duplicate_key",
    # calls an op wrapper dropped because even their sanitised copy could not be written
    "wrapper_dropped",
)
# Written by the owner (or any tracer), read by every sender: kept once, in the first block.
REQUEST_FIELDS = frozenset({"flush_request_ns", "shutdown_request", "sender_restarts",
                            "orphans_adopted", "orphan_records", "untraced_no_shared_memory",
                            "untraced_no_slot"})
# Gauges whose value for all senders together is the largest of theirs, not the sum.
_MAX_FIELDS = frozenset({"sender_heartbeat_ns", "complete_mode", "compressing",
                         "latency_p50_us", "latency_p90_us", "latency_p99_us", "latency_max_us"})
# A gauge whose value for all senders together is their mean.
_MEAN_FIELDS = frozenset({"size_target_bytes"})

_SENDER_INDEX = {name: i for i, name in enumerate(SENDER_FIELDS)}
_SLOT_INDEX = {name: i for i, name in enumerate(SLOT_FIELDS)}
_CELL_BYTES = 8
_HEADER_CELLS = 1  # the number of sender blocks


def control_path(ring_dir: str) -> str:
    return os.path.join(ring_dir, "control")


def _size_bytes(max_slots: int, senders: int) -> int:
    return (_HEADER_CELLS + senders * len(SENDER_FIELDS) + max_slots * len(SLOT_FIELDS)) * _CELL_BYTES


def _reserve(fd: int, size: int, path: str) -> None:
    """Give the (sparse) file its blocks now: every process writes its cells through a
    mapping, and a first write into a full disk there would be a SIGBUS, not an error."""
    try:
        reserve(fd, 0, size)
    except OSError as exc:
        if exc.errno not in NO_ROOM_ERRNOS:
            raise
        raise OSError(exc.errno, f"no room for the engine's control block ({size} bytes): "
                      f"{exc.strerror}", path) from None


class Control:
    """Int64 cells in a shared file: ``ctl.get("retries")``, ``ctl.add("retries")``.

    Each sender process has a block of its own (``sender``: its index; several senders
    share an engine's rings, see ``senders``); the owner's requests live once, in the first.
    A process that is no sender (``sender=None``: the owner, a tracer, ``engine stats``)
    reads every sender field as all senders' total (a sum, the largest of the gauges in
    ``_MAX_FIELDS``, the mean target size).
    """

    def __init__(self, path: str, max_slots: int | None = None, *, create: bool = False,
                 senders: int = 1, sender: int | None = None) -> None:
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                if max_slots is None:
                    raise ValueError("creating a control block needs max_slots")
                size = _size_bytes(max_slots, senders)
                os.ftruncate(fd, size)
                _reserve(fd, size, path)
            else:
                size = os.fstat(fd).st_size
            self._mmap = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._cells = memoryview(self._mmap).cast("q")
        if create:
            self._cells[0] = senders
        self.senders = self._cells[0]
        width = len(SENDER_FIELDS)
        self._slot_base = _HEADER_CELLS + self.senders * width
        self.max_slots = (len(self._cells) - self._slot_base) // len(SLOT_FIELDS)
        self._sender = sender
        own = _HEADER_CELLS + (sender or 0) * width
        # this process's cell of each sender field: its own block, the first for requests
        self._cell = {name: (_HEADER_CELLS if name in REQUEST_FIELDS else own) + i
                      for name, i in _SENDER_INDEX.items()}

    def get(self, name: str) -> int:
        if self._sender is not None or name in REQUEST_FIELDS:
            return self._cells[self._cell[name]]
        return self._total(name)

    def set(self, name: str, value: int) -> None:
        self._cells[self._cell[name]] = int(value)

    def add(self, name: str, delta: int = 1) -> None:
        self._cells[self._cell[name]] += delta

    def _values(self, name: str) -> list[int]:
        first, width = _HEADER_CELLS + _SENDER_INDEX[name], len(SENDER_FIELDS)
        return [self._cells[first + k * width] for k in range(self.senders)]

    def _total(self, name: str) -> int:
        values = self._values(name)
        if name == "sender_pid":
            return next((v for v in values if v), 0)
        if name in _MAX_FIELDS:
            return max(values)
        if name in _MEAN_FIELDS:
            live = [v for v in values if v]
            return sum(live) // len(live) if live else 0
        return sum(values)

    def sender_pids(self) -> list[int]:
        """Each sender's pid (0 where none has published one yet)."""
        return self._values("sender_pid")

    def slot_add(self, slot: int, name: str, delta: int = 1) -> None:
        self._cells[self._slot_base + slot * len(SLOT_FIELDS) + _SLOT_INDEX[name]] += delta

    def sender_snapshot(self) -> dict[str, Any]:
        """Every sender field as all senders' total (this sender's own, in a sender)."""
        snapshot: dict[str, Any] = {name: self.get(name) for name in SENDER_FIELDS}
        if self._sender is None:
            snapshot["sender_pids"] = self.sender_pids()
        return snapshot

    def slots_total(self, name: str, slots: range) -> int:
        """One producer counter summed over ``slots`` (a sender's: ``RingReader.slots``)."""
        width = len(SLOT_FIELDS)
        first = self._slot_base + slots.start * width + _SLOT_INDEX[name]
        end = self._slot_base + min(slots.stop, self.max_slots) * width
        return sum(self._cells[first:end:width * slots.step])

    def producer_totals(self) -> dict[str, int]:
        width = len(SLOT_FIELDS)
        end = self._slot_base + self.max_slots * width
        # one strided slice per counter: every slot's cell of it (max_slots is 1,024)
        return {name: sum(self._cells[self._slot_base + i : end : width])
                for name, i in _SLOT_INDEX.items()}  # fmt: skip

    def close(self) -> None:
        try:
            self._cells.release()
            self._mmap.close()
        except (BufferError, ValueError):
            pass  # another view is still alive; the mapping goes with the process

    def __reduce__(self) -> Any:  # pragma: no cover - Controls are re-opened by path, never pickled
        raise TypeError("Control is process-local; attach by path")
