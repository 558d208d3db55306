"""Ring space is released only after the batch holding a record is settled (acknowledged,
dead-lettered or spooled), and only contiguously per ring (DESIGN 3): :class:`ReleaseTracker`.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Iterable

from engine import ring

# A ref names one record read from a ring: its index in that ring's read sequence, shifted
# left, or'ed with its slot. One int per record instead of an object keeps the per-record
# bookkeeping to list and bytearray operations.
_SLOT_BITS = 16
_SLOT_MASK = (1 << _SLOT_BITS) - 1
_END_POS = operator.attrgetter("end_pos")
_SLOT = operator.attrgetter("slot")


class _Lane:
    """One ring's records read and not yet released, in read order."""

    __slots__ = ("ends", "done", "base")

    def __init__(self, base: int) -> None:
        self.ends: list[int] = []  # end positions
        self.done = bytearray()  # 1 once the record is settled
        self.base = base  # read index of ends[0]


class ReleaseTracker:
    """Per ring, the records read but not yet released, in read order.

    ``track`` names each record read with a ref; ``ack`` marks refs settled and releases each
    ring up to the end of its longest settled prefix, so release stays contiguous per ring
    whatever order the acknowledgements come in. Refs belong to the tracker that made them.
    """

    def __init__(self, release: Callable[[int, int], None]) -> None:
        self._release = release  # RingReader.release(slot, end_pos)
        self._lanes: dict[int, _Lane] = {}
        # read indexes go on growing when a slot is reused, so a late ref can never name a
        # record of the slot's next producer
        self._next_index: dict[int, int] = {}
        self.released_pos: dict[int, int] = {}
        self.read_pos: dict[int, int] = {}
        # refs whose item was split (a run cut in pieces): acks still due beyond the next one
        self._pieces: dict[int, int] = {}

    def track(self, records: list[ring.Record]) -> list[int]:
        """Refs for ``records`` (read order within each ring), one per record."""
        refs: list[int] = []
        for slot, run in itertools.groupby(records, _SLOT):
            ends = list(map(_END_POS, run))
            lane = self._lanes.get(slot) or self._new_lane(slot)
            first = lane.base + len(lane.ends)
            lane.ends += ends
            lane.done += bytes(len(ends))
            refs += range(first << _SLOT_BITS | slot, (first + len(ends)) << _SLOT_BITS | slot,
                          1 << _SLOT_BITS)
            self.read_pos[slot] = ends[-1]
        return refs

    def _new_lane(self, slot: int) -> _Lane:
        if not 0 <= slot <= _SLOT_MASK:
            raise ValueError(f"ring slot {slot} does not fit a ref (at most {_SLOT_MASK})")
        lane = self._lanes[slot] = _Lane(self._next_index.pop(slot, 0))
        return lane

    def split(self, ref: int, extra_pieces: int) -> None:
        """The item holding ``ref`` was cut into ``extra_pieces`` more: the record is settled
        once every piece is (each acks the ref)."""
        self._pieces[ref] = self._pieces.get(ref, 0) + extra_pieces

    def ack(self, refs: Iterable[int]) -> None:
        """Mark ``refs`` settled and release what that makes contiguous. A ref already
        released (acknowledged before) changes nothing."""
        lanes, pieces = self._lanes, self._pieces
        slot_mask, slot_bits = _SLOT_MASK, _SLOT_BITS
        for ref in refs:
            if pieces and ref in pieces:  # one piece of a split item: wait for the others
                extra = pieces.pop(ref)
                if extra > 1:
                    pieces[ref] = extra - 1
                continue
            lane = lanes.get(ref & slot_mask)
            if lane is not None:
                index = (ref >> slot_bits) - lane.base
                if index >= 0:
                    lane.done[index] = 1
        for slot, lane in lanes.items():
            self._advance(slot, lane)

    def _advance(self, slot: int, lane: _Lane) -> None:
        settled = lane.done.find(0)
        if settled < 0:
            settled = len(lane.done)
        if settled:
            end_pos = lane.ends[settled - 1]
            del lane.ends[:settled], lane.done[:settled]
            lane.base += settled
            self.released_pos[slot] = end_pos
            self._release(slot, end_pos)

    def pending(self) -> int:
        return sum(len(lane.ends) for lane in self._lanes.values())

    def forget_slot(self, slot: int) -> None:
        lane = self._lanes.pop(slot, None)
        if lane is not None:
            self._next_index[slot] = lane.base + len(lane.ends)
        self.read_pos.pop(slot, None)
        self.released_pos.pop(slot, None)
        for ref in [r for r in self._pieces if r & _SLOT_MASK == slot]:
            del self._pieces[ref]
