"""The ring set's shared-memory layout, record format and write codes (both sides read them).

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
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

KIND_PAD = 0
KIND_START = 1
KIND_END = 2
KIND_COMPLETE = 3
KIND_RAW = 4
# Never in a ring: a start and its end that the reader spliced into one complete item.
# Its end_pos is the end's, its aux the start's end position (the two are adjacent).
KIND_SPLICED = 16
# Never in a ring: adjacent complete calls of one project the reader joined into one
# RunRecord (C accelerator only): their items joined by commas, aux the number of calls.
KIND_RUN = 17

# kind u8, flags u8, project_len u16, payload_len u32, aux u32, pad u32,
# call_id 16s, trace_id 16s, enqueue_ns u64  (little-endian, no implicit alignment)
RECORD_HEADER = struct.Struct("<BBHII4x16s16sQ")
HEADER_BYTES = RECORD_HEADER.size  # 56
MAX_PROJECT_BYTES = 512
MIN_RING_BYTES = 4096

MAGIC = 0x454E47494E455247  # "ENGINERG"
VERSION = 1
U64 = 8
GLOBAL_WORDS = 16
SLOT_WORDS = 24
DATA_ALIGN_BYTES = 4096

# global words
G_MAGIC, G_VERSION, G_RING_BYTES, G_MAX_SLOTS, G_OWNER_PID, G_CLAIMS = range(6)
# Its own cache line: producers read it on every record. One flag per sender (words 8..15):
# a ring set read by several senders (RingSpec.senders) gives slot s to sender s % senders,
# whose producers look at flag G_SLEEPING + s % senders and ring its own doorbell.
G_SLEEPING = 8
MAX_SENDERS = GLOBAL_WORDS - G_SLEEPING
# slot words, relative to the slot block
S_HEAD, S_RECORDS_WRITTEN, S_FULL_WAITS, S_DOORBELLS = 0, 1, 2, 3
S_READ, S_RELEASED, S_RECORDS_READ, S_RECORDS_RELEASED = 8, 9, 10, 11
S_STATE, S_PID, S_START_TICKS, S_TIMES_CLAIMED = 16, 17, 18, 19

FREE, ACTIVE, CLOSING, DEAD = 0, 1, 2, 3
# SlotWriter.raw_write codes (engine.native._native.RingWriter.try_write returns the same)
WRITTEN, WRITTEN_RING, NO_ROOM = 1, 2, 0
TOO_LARGE, BAD_CALL_ID, BAD_TRACE_ID = -1, -2, -3
OVER_MAX_PAYLOAD, NO_SPLICE_KEY = -4, -5  # put() only (the pure put raises for the latter)
UNPLANNED = -6  # put_item() only: nothing done, use put()

# record flags: an end whose item carries trace_id and started_at (see the sender's headers)
FLAG_END_HAS_TRACE = 1


@dataclass(frozen=True)
class RingSpec:
    """Everything a process needs to attach to a ring set; picklable, so it crosses spawn."""

    shm_name: str
    ring_bytes: int
    max_slots: int
    doorbell_path: str
    lock_path: str
    senders: int = 1  # sender processes sharing the slots (slot s: sender s % senders)

    def shard_of(self, slot: int) -> int:
        """The sender (0 .. senders - 1) that reads ``slot``."""
        return slot % self.senders

    def doorbell_of(self, shard: int) -> str:
        """The doorbell FIFO of sender ``shard`` (the first keeps the plain name)."""
        return self.doorbell_path if shard == 0 else f"{self.doorbell_path}.{shard}"


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


class RunRecord(NamedTuple):
    """A ``Record`` of kind ``KIND_RUN``: ``call_id`` / ``trace_id`` / ``enqueue_ns`` are the
    first call's, ``aux`` the number of calls, ``end_pos`` the last one's; ``calls`` holds per
    call the end offset of its item in ``payload`` (u32 little-endian) and its call id (16
    bytes): 20 bytes each."""

    slot: int
    end_pos: int
    kind: int
    flags: int
    call_id: bytes
    trace_id: bytes
    project: bytes
    payload: bytes
    aux: int
    enqueue_ns: int
    calls: bytes


RUN_CALL_BYTES = 20  # per call in RunRecord.calls


def record_bytes(project_len: int, payload_len: int) -> int:
    """Ring bytes one record occupies (header, project, payload, padding to 8)."""
    return (HEADER_BYTES + project_len + payload_len + 7) & ~7


def data_offset(max_slots: int) -> int:
    control = (GLOBAL_WORDS + SLOT_WORDS * max_slots) * U64
    return -(-control // DATA_ALIGN_BYTES) * DATA_ALIGN_BYTES

