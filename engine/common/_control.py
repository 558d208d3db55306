"""A small shared control block: sender statistics and requests between processes.

One file in the ring set's private directory, mapped by every process that needs it:
the sender publishes its counters and gauges (single writer), producers publish their own
per-slot counters (single writer per slot), the owner and any tracer post a flush request.
Every cell is an aligned int64, so readers in other processes never see torn values on
the 64-bit platforms we run on.
"""

from __future__ import annotations

import mmap
import os
from typing import Any

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
    "unpersisted_no_space",  # items a full disk (ENOSPC, EDQUOT, EFBIG) kept from the spool/dead letters
    "unpersisted_unwritable",  # items another OS error kept from them (EACCES, EROFS, ENOTDIR, ...)
    "parked_items",  # gauge: items held in memory (not released) until their file can be written
    "kept_in_ring",  # items a sender left in shared memory at exit, for recovery
    "orphans_adopted",  # ring sets of dead engines this engine started recovering
    "orphan_records",  # the records they held
    "eager_starts",
    "completes_spliced",
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
)
SLOT_FIELDS = ("dropped_full", "raised_full", "too_large", "stringified", "blocked_ms")

_SENDER_INDEX = {name: i for i, name in enumerate(SENDER_FIELDS)}
_SLOT_INDEX = {name: i for i, name in enumerate(SLOT_FIELDS)}
_CELL_BYTES = 8


def control_path(ring_dir: str) -> str:
    return os.path.join(ring_dir, "control")


def _size_bytes(max_slots: int) -> int:
    return (len(SENDER_FIELDS) + max_slots * len(SLOT_FIELDS)) * _CELL_BYTES


class Control:
    """Int64 cells in a shared file: ``ctl.get("retries")``, ``ctl.add("retries")``."""

    def __init__(self, path: str, max_slots: int, *, create: bool = False) -> None:
        size = _size_bytes(max_slots)
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, size)
            self._mmap = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._cells = memoryview(self._mmap).cast("q")
        self._slot_base = len(SENDER_FIELDS)
        self.max_slots = max_slots

    def get(self, name: str) -> int:
        return self._cells[_SENDER_INDEX[name]]

    def set(self, name: str, value: int) -> None:
        self._cells[_SENDER_INDEX[name]] = int(value)

    def add(self, name: str, delta: int = 1) -> None:
        self._cells[_SENDER_INDEX[name]] += delta

    def slot_add(self, slot: int, name: str, delta: int = 1) -> None:
        self._cells[self._slot_base + slot * len(SLOT_FIELDS) + _SLOT_INDEX[name]] += delta

    def sender_snapshot(self) -> dict[str, int]:
        return {name: self._cells[i] for name, i in _SENDER_INDEX.items()}

    def producer_totals(self) -> dict[str, int]:
        totals = dict.fromkeys(SLOT_FIELDS, 0)
        width = len(SLOT_FIELDS)
        for slot in range(self.max_slots):
            base = self._slot_base + slot * width
            for name, i in _SLOT_INDEX.items():
                totals[name] += self._cells[base + i]
        return totals

    def close(self) -> None:
        try:
            self._cells.release()
            self._mmap.close()
        except (BufferError, ValueError):
            pass  # another view is still alive; the mapping goes with the process

    def __reduce__(self) -> Any:  # pragma: no cover - Controls are re-opened by path, never pickled
        raise TypeError("Control is process-local; attach by path")
