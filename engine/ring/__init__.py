"""The shared-memory ring set: written by producers, drained by the sender.

Both sides map the same segment; the writer half runs in the user's process (microseconds,
never blocks past ``max_block_ms``). Imports ``engine.common``, ``engine.native``, ``engine.wire``.
"""

from engine.ring._layout import (
    BAD_CALL_ID,
    BAD_TRACE_ID,
    FLAG_END_HAS_TRACE,
    HEADER_BYTES,
    KIND_COMPLETE,
    KIND_END,
    KIND_PAD,
    KIND_RAW,
    KIND_SPLICED,
    KIND_START,
    MAX_PROJECT_BYTES,
    MIN_RING_BYTES,
    NO_ROOM,
    NO_SPLICE_KEY,
    OVER_MAX_PAYLOAD,
    RECORD_HEADER,
    TOO_LARGE,
    UNPLANNED,
    WRITTEN,
    WRITTEN_RING,
    Record,
    RingSpec,
    record_bytes,
)
from engine.ring._reader import RingReader
from engine.ring._set import NoFreeSlot, RingSet
from engine.ring._writer import NativeSlotWriter, SlotWriter

__all__ = [
    "BAD_CALL_ID",
    "BAD_TRACE_ID",
    "FLAG_END_HAS_TRACE",
    "HEADER_BYTES",
    "KIND_COMPLETE",
    "KIND_END",
    "KIND_PAD",
    "KIND_RAW",
    "KIND_SPLICED",
    "KIND_START",
    "MAX_PROJECT_BYTES",
    "MIN_RING_BYTES",
    "NO_ROOM",
    "NO_SPLICE_KEY",
    "OVER_MAX_PAYLOAD",
    "RECORD_HEADER",
    "TOO_LARGE",
    "UNPLANNED",
    "WRITTEN",
    "WRITTEN_RING",
    "NativeSlotWriter",
    "NoFreeSlot",
    "Record",
    "RingReader",
    "RingSet",
    "RingSpec",
    "SlotWriter",
    "record_bytes",
]
