"""From ring records to size-bounded request bodies, without decoding JSON.

Three pieces, all synchronous and unit-testable without a server:

* :class:`ReleaseTracker` — ring space is released only after the batch holding a record is
  acknowledged (or dead-lettered or spooled), and only contiguously per ring (DESIGN 3).
* :class:`Router` — turns records into deliverable :class:`Item` s for the current target:
  ``upsert`` wraps each start/end for ``/call/upsert_batch``; ``complete`` pairs a start with
  its end by call id and splices one complete-call item. A start still waiting for its end is
  held in a table; after ``eager_start_ms`` (or when it pins too much of its ring, or on
  flush) it goes out on its own through v2 ``call/start`` and its end later through v2
  ``call/end``.
* :class:`Accumulator` — per route, collects items into a :class:`Batch` cut at the size
  target or after ``linger_ms``.
"""

from __future__ import annotations

import collections
import itertools
import operator
import time
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from engine import ring
from engine.wire._codec import uuid7

_KIND_START, _KIND_END, _KIND_COMPLETE = ring.KIND_START, ring.KIND_END, ring.KIND_COMPLETE
_KIND_SPLICED = ring.KIND_SPLICED

UPSERT_ROUTE = "/call/upsert_batch"
_BATCH_PREFIX = b'{"batch":['
_BATCH_SUFFIX = b"]}"
_ENVELOPE_BYTES = len(_BATCH_PREFIX) + len(_BATCH_SUFFIX)
_UPSERT_START = b'{"mode":"start","req":{"start":'
_UPSERT_END = b'{"mode":"end","req":{"end":'
_UPSERT_CLOSE = b"}}"
_V2_START = b'{"start":'
_V2_END = b'{"end":'
_V2_CLOSE = b"}"


# project -> route, per route kind: made once per project (the hot path asks per item)
_COMPLETE_ROUTES: dict[bytes, str] = {}
_V2_START_ROUTES: dict[bytes, str] = {}
_V2_END_ROUTES: dict[bytes, str] = {}


def _v2_route(cache: dict[bytes, str], project: bytes, suffix: str) -> str:
    """``/v2/{entity}/{project}/<suffix>``, remembered in ``cache``."""
    route = cache.get(project)
    if route is None:
        route = cache[project] = f"/v2/{project.decode()}/{suffix}"
    return route


def complete_route(project: bytes) -> str:
    return _v2_route(_COMPLETE_ROUTES, project, "calls/complete")


def v2_start_route(project: bytes) -> str:
    return _v2_route(_V2_START_ROUTES, project, "call/start")


def v2_end_route(project: bytes) -> str:
    return _v2_route(_V2_END_ROUTES, project, "call/end")


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

    def ack(self, refs: Iterable[int]) -> None:
        """Mark ``refs`` settled and release what that makes contiguous. A ref already
        released (acknowledged before) changes nothing."""
        lanes = self._lanes
        slot_mask, slot_bits = _SLOT_MASK, _SLOT_BITS
        for ref in refs:
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


class Item(NamedTuple):
    """One deliverable element of a request body and the ring records (refs) it settles.

    It keeps only what delivery needs, not the records themselves. Its bytes stay in pieces
    that the body's one join copies: an upsert item holds its record's payload between the
    wrapper's bytes, a complete item the start without its ``}`` and the end from its splice
    offset. The last piece is the ``,`` that separates it from the next item of a body. A
    tuple, built with ``tuple.__new__`` on the hot path: one allocation per item.
    """

    parts: tuple[bytes, ...]
    size: int  # bytes of the item itself, its separator not counted
    refs: tuple[int, ...]
    route: str
    single: bool  # v2 call/start and call/end: one item, no batch envelope
    call_id: bytes  # these four from the start, when the item carries one
    project: bytes
    trace_id: bytes
    enqueue_ns: int
    ends_carry_trace: bool  # no end, or every end has trace_id+started_at

    @property
    def data(self) -> bytes:
        """The item's JSON in one piece (a copy: for a single request or a dead letter)."""
        return b"".join(self.parts[:-1])


def _item(parts: tuple[bytes, ...], first: ring.Record, refs: tuple[int, ...], route: str,
          single: bool = False, ends_carry_trace: bool = True) -> Item:
    """An item of one record's payload wrapped in ``parts`` (ending with the separator)."""
    size = sum(map(len, parts)) - 1
    return _new_tuple(Item, (parts, size, refs, route, single, first.call_id, first.project,
                             first.trace_id, first.enqueue_ns, ends_carry_trace))


_new_tuple = tuple.__new__
_ITEM_REFS = operator.attrgetter("refs")
_ITEM_PARTS = operator.attrgetter("parts")
_SEPARATOR = b","


class Batch:
    """Items for one route; ``body()`` is the request body, built by concatenation."""

    __slots__ = ("route", "items", "size_bytes", "retry_id", "attempts", "created_s", "first_sent_s",
                 "target_bytes")

    def __init__(self, route: str, items: list[Item] | None = None, target_bytes: int = 0) -> None:
        self.route = route
        self.target_bytes = target_bytes  # the size it was cut at (0: made by a split)
        self.items: list[Item] = items or []
        self.size_bytes = _ENVELOPE_BYTES + sum(i.size + 1 for i in self.items)
        self.retry_id = uuid7()
        self.attempts = 0
        self.created_s = time.monotonic()
        self.first_sent_s: float | None = None

    def add(self, item: Item) -> None:
        self.items.append(item)
        self.size_bytes += item.size + 1

    def body(self) -> bytes:
        if len(self.items) == 1 and self.items[0].single:
            return self.items[0].data
        # One join of every item's pieces: the body's megabytes are copied once. The last
        # item's separator gives way to the envelope's end.
        pieces = [_BATCH_PREFIX]
        pieces += itertools.chain.from_iterable(map(_ITEM_PARTS, self.items))
        pieces[-1] = _BATCH_SUFFIX
        return b"".join(pieces)

    def halves(self) -> tuple[Batch, Batch]:
        mid = len(self.items) // 2
        return Batch(self.route, self.items[:mid]), Batch(self.route, self.items[mid:])

    def chunks(self, max_bytes: int) -> list[Batch]:
        """Consecutive pieces of at most ``max_bytes`` each (an item larger than that goes
        alone), in order; at least two pieces when the batch holds more than one item."""
        if len(self.items) > 1 and self.size_bytes <= max_bytes:
            return list(self.halves())
        pieces: list[Batch] = []
        current = Batch(self.route)
        for item in self.items:
            if current.items and current.size_bytes + item.size + 1 > max_bytes:
                pieces.append(current)
                current = Batch(self.route)
            current.add(item)
        pieces.append(current)
        return pieces if len(pieces) > 1 or len(self.items) == 1 else list(self.halves())

    def refs(self) -> Iterator[int]:
        return itertools.chain.from_iterable(map(_ITEM_REFS, self.items))

    def __len__(self) -> int:
        return len(self.items)


class Router:
    """Records → items for the current target mode (``complete`` or ``upsert``)."""

    def __init__(self, mode: str, max_item_bytes: int) -> None:
        self.mode = mode
        self.max_item_bytes = max_item_bytes
        # complete mode: records waiting for their partner, by raw call id (insertion ordered)
        self.pending_starts: dict[tuple[bytes, bytes], tuple[ring.Record, int, float]] = {}
        self.pending_ends: dict[tuple[bytes, bytes], tuple[ring.Record, int, float]] = {}
        # starts sent on their own: their end goes to v2 call/end (bounded, oldest evicted)
        self.started_alone: collections.OrderedDict[tuple[bytes, bytes], None] = collections.OrderedDict()
        self.started_alone_max = 1_000_000
        # records of a kind no route carries, with their refs and why: the caller dead-letters them
        self.unroutable: list[tuple[ring.Record, int, str]] = []
        self.eager_starts = 0
        self.spliced = 0

    def route(self, records: list[ring.Record], refs: list[int]) -> list[Item]:
        """Items for ``records`` (``refs`` from :meth:`ReleaseTracker.track`), in read order.

        A record waiting for its partner makes no item yet; one of an unknown kind goes to
        ``unroutable``.
        """
        items: list[Item] = []
        if self.mode == "upsert":
            for record, ref in zip(records, refs):
                self._direct(items, record, ref)
        else:
            self._route_complete(items, records, refs)
        return items

    def _route_complete(self, items: list[Item], records: list[ring.Record],
                        refs: list[int]) -> None:
        """Pair starts with ends and splice each pair into one item.

        One loop with local names and the splice inline: it runs for every record.
        """
        starts, ends, started_alone = self.pending_starts, self.pending_ends, self.started_alone
        max_item_bytes = self.max_item_bytes
        spliced = 0
        now = time.monotonic()  # the whole read arrived at once
        for record, ref in zip(records, refs):
            kind = record.kind
            if kind == _KIND_SPLICED:  # the reader paired a start with its adjacent end
                payload, project = record.payload, record.project
                spliced += 1
                items.append(_new_tuple(Item, (
                    (payload, _SEPARATOR), len(payload), (ref,),
                    _COMPLETE_ROUTES.get(project) or complete_route(project), False,
                    record.call_id, project, record.trace_id, record.enqueue_ns, True)))
                continue
            if kind == _KIND_END:
                key = (record.project, record.call_id)
                waiting = starts.pop(key, None)
                if waiting is None:
                    if key in started_alone:
                        del started_alone[key]
                        items.append(self._v2_end(record, ref))
                    else:
                        ends[key] = (record, ref, now)
                    continue
                start, start_ref, _seen = waiting
                end, end_ref = record, ref
            elif kind == _KIND_START:
                key = (record.project, record.call_id)
                waiting = ends.pop(key, None)
                if waiting is None:
                    starts[key] = (record, ref, now)
                    continue
                start, start_ref = record, ref
                end, end_ref, _seen = waiting
            else:
                self._direct(items, record, ref)
                continue
            start_payload, end_payload, splice = start.payload, end.payload, end.aux
            size = len(start_payload) + len(end_payload) - splice  # "}" makes way for ","
            if size > max_item_bytes:  # too big together: each goes alone (the server merges them)
                items.append(self._v2_start(start, start_ref))
                items.append(self._v2_end(end, end_ref))
                continue
            project = start.project
            spliced += 1
            items.append(_new_tuple(Item, (
                (start_payload[:-1], _SEPARATOR, end_payload[splice:], _SEPARATOR), size,
                (start_ref, end_ref), _COMPLETE_ROUTES.get(project) or complete_route(project),
                False, start.call_id, project, start.trace_id, start.enqueue_ns, True)))
        self.spliced += spliced

    def _direct(self, items: list[Item], record: ring.Record, ref: int) -> None:
        kind = record.kind
        if kind == _KIND_START:
            parts = (_UPSERT_START, record.payload, _UPSERT_CLOSE, _SEPARATOR)
            items.append(_item(parts, record, (ref,), UPSERT_ROUTE))
        elif kind == _KIND_END:
            parts = (_UPSERT_END, record.payload, _UPSERT_CLOSE, _SEPARATOR)
            items.append(_item(parts, record, (ref,), UPSERT_ROUTE,
                               ends_carry_trace=bool(record.flags & ring.FLAG_END_HAS_TRACE)))
        elif kind in (_KIND_COMPLETE, _KIND_SPLICED):  # spliced: only read in complete mode
            items.append(_item((record.payload, _SEPARATOR), record, (ref,),
                               complete_route(record.project)))
        else:
            self.unroutable.append((record, ref, f"record kind {kind} has no route "
                                                 "(written by a newer producer?)"))

    def _v2_start(self, record: ring.Record, ref: int) -> Item:
        self.eager_starts += 1
        key = (record.project, record.call_id)
        self.started_alone[key] = None
        if len(self.started_alone) > self.started_alone_max:
            self.started_alone.popitem(last=False)
        parts = (_V2_START, record.payload, _V2_CLOSE, _SEPARATOR)
        return _item(parts, record, (ref,), v2_start_route(record.project), single=True)

    def _v2_end(self, record: ring.Record, ref: int) -> Item:
        parts = (_V2_END, record.payload, _V2_CLOSE, _SEPARATOR)
        return _item(parts, record, (ref,), v2_end_route(record.project), single=True,
                     ends_carry_trace=bool(record.flags & ring.FLAG_END_HAS_TRACE))

    def expire(self, older_than_s: float, read_pos: dict[int, int] | None = None,
               pin_limit_bytes: int = 0, everything: bool = False) -> list[Item]:
        """Send waiting records on their own when they waited ``older_than_s``, when more
        than ``pin_limit_bytes`` of their ring were read after them (they pin its space), or
        when a flush asks for ``everything``."""
        cutoff = time.monotonic() - older_than_s
        read_pos = read_pos or {}
        items: list[Item] = []
        for table, make in ((self.pending_starts, self._v2_start), (self.pending_ends, self._v2_end)):
            for key, (record, ref, seen) in list(table.items()):
                pinning = pin_limit_bytes and (
                    read_pos.get(record.slot, 0) - record.end_pos > pin_limit_bytes)
                if everything or seen <= cutoff or pinning:
                    del table[key]
                    items.append(make(record, ref))
        return items

    def oldest_pending_s(self) -> float | None:
        oldest = None
        for table in (self.pending_starts, self.pending_ends):
            for _record, _ref, seen in table.values():
                oldest = seen if oldest is None else min(oldest, seen)
                break  # dicts keep insertion order: the first is the oldest
        return oldest

    def held(self) -> int:
        return len(self.pending_starts) + len(self.pending_ends)


class Accumulator:
    """Open batches per route, cut at ``size_target`` bytes or after ``linger_s``."""

    def __init__(self) -> None:
        self.open: dict[str, Batch] = {}
        self.open_bytes = 0

    def add(self, items: Iterable[Item], next_target: Callable[[], int]) -> list[Batch]:
        """Add items in order; returns the batches they filled (to send), in order. A new batch
        is cut at ``next_target()`` bytes (asked once per batch)."""
        full: list[Batch] = []
        open_batches = self.open
        added_bytes = 0
        for item in items:
            size = item.size + 1
            if item.single:
                full.append(Batch(item.route, [item]))
                continue
            batch = open_batches.get(item.route)
            if batch is None or batch.size_bytes + size > batch.target_bytes:
                if batch is not None:
                    full.append(open_batches.pop(item.route))
                    added_bytes -= batch.size_bytes
                batch = open_batches[item.route] = Batch(item.route, target_bytes=next_target())
                added_bytes += batch.size_bytes
            batch.items.append(item)
            batch.size_bytes += size
            added_bytes += size
        self.open_bytes += added_bytes
        return full

    def due(self, linger_s: float, everything: bool = False) -> list[Batch]:
        cutoff = time.monotonic() - linger_s
        ready = [r for r, b in self.open.items() if everything or b.created_s <= cutoff]
        batches = [self.open.pop(r) for r in ready]
        self.open_bytes -= sum(b.size_bytes for b in batches)
        return batches

    def oldest_s(self) -> float | None:
        return min((b.created_s for b in self.open.values()), default=None)
