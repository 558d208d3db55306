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
import time
from collections.abc import Callable, Iterable, Iterator

from engine import _ring
from engine._producer import FLAG_END_HAS_TRACE
from engine.wire._codec import uuid7

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


_route_cache: dict[tuple[bytes, str], str] = {}


def _v2_route(project: bytes, suffix: str) -> str:
    """``/v2/{entity}/{project}/<suffix>``, made once per project (the hot path asks often)."""
    route = _route_cache.get((project, suffix))
    if route is None:
        route = _route_cache[(project, suffix)] = f"/v2/{project.decode()}/{suffix}"
    return route


def complete_route(project: bytes) -> str:
    return _v2_route(project, "calls/complete")


def v2_start_route(project: bytes) -> str:
    return _v2_route(project, "call/start")


def v2_end_route(project: bytes) -> str:
    return _v2_route(project, "call/end")


class UnknownRecord(ValueError):
    """A ring record of a kind this sender cannot route."""


class Token:
    """One ring record waiting to be acknowledged."""

    __slots__ = ("slot", "end_pos", "done")

    def __init__(self, slot: int, end_pos: int) -> None:
        self.slot = slot
        self.end_pos = end_pos
        self.done = False


class ReleaseTracker:
    """Per ring, the records read but not yet released, in read order."""

    def __init__(self, release: callable) -> None:
        self._release = release  # RingReader.release(slot, end_pos)
        self._queues: dict[int, collections.deque[Token]] = collections.defaultdict(collections.deque)
        self.released_pos: dict[int, int] = {}
        self.read_pos: dict[int, int] = {}

    def track(self, slot: int, end_pos: int) -> Token:
        token = Token(slot, end_pos)
        self._queues[slot].append(token)
        self.read_pos[slot] = end_pos
        return token

    def ack(self, tokens: Iterable[Token]) -> None:
        slots = set()
        for token in tokens:
            token.done = True
            slots.add(token.slot)
        for slot in slots:
            self._advance(slot)

    def _advance(self, slot: int) -> None:
        queue = self._queues[slot]
        last = None
        while queue and queue[0].done:
            last = queue.popleft()
        if last is not None:
            self.released_pos[slot] = last.end_pos
            self._release(slot, last.end_pos)

    def unreleased_bytes(self, slot: int) -> int:
        queue = self._queues.get(slot)
        if not queue:
            return 0
        return self.read_pos[slot] - queue[0].end_pos

    def pending(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def forget_slot(self, slot: int) -> None:
        self._queues.pop(slot, None)
        self.read_pos.pop(slot, None)
        self.released_pos.pop(slot, None)


class Item:
    """One deliverable element of a request body and the ring records (tokens) it settles.

    It keeps only what delivery needs, not the records themselves: their payloads are freed
    once the item's bytes are made, so memory holds each body once.
    """

    __slots__ = ("data", "tokens", "route", "single", "call_id", "project", "trace_id",
                 "enqueue_ns", "ends_carry_trace")

    def __init__(self, data: bytes, first: _ring.Record, tokens: tuple[Token, ...], route: str,
                 single: bool = False, ends_carry_trace: bool = True) -> None:
        self.data = data
        self.tokens = tokens
        self.route = route
        self.single = single  # v2 call/start and call/end: one item, no batch envelope
        self.call_id = first.call_id  # first: the start, when the item carries one
        self.project = first.project
        self.trace_id = first.trace_id
        self.enqueue_ns = first.enqueue_ns
        self.ends_carry_trace = ends_carry_trace  # no end, or every end has trace_id+started_at


class Batch:
    """Items for one route; ``body()`` is the request body, built by concatenation."""

    __slots__ = ("route", "items", "size_bytes", "retry_id", "attempts", "created_s", "first_sent_s",
                 "target_bytes")

    def __init__(self, route: str, items: list[Item] | None = None, target_bytes: int = 0) -> None:
        self.route = route
        self.target_bytes = target_bytes  # the size it was cut at (0: made by a split)
        self.items: list[Item] = items or []
        self.size_bytes = _ENVELOPE_BYTES + sum(len(i.data) + 1 for i in self.items)
        self.retry_id = uuid7()
        self.attempts = 0
        self.created_s = time.monotonic()
        self.first_sent_s: float | None = None

    def add(self, item: Item) -> None:
        self.items.append(item)
        self.size_bytes += len(item.data) + 1

    def body(self) -> bytes:
        if len(self.items) == 1 and self.items[0].single:
            return self.items[0].data
        return b"".join((_BATCH_PREFIX, b",".join(i.data for i in self.items), _BATCH_SUFFIX))

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
            if current.items and current.size_bytes + len(item.data) + 1 > max_bytes:
                pieces.append(current)
                current = Batch(self.route)
            current.add(item)
        pieces.append(current)
        return pieces if len(pieces) > 1 or len(self.items) == 1 else list(self.halves())

    def tokens(self) -> Iterator[Token]:
        for item in self.items:
            yield from item.tokens

    def __len__(self) -> int:
        return len(self.items)


class Router:
    """Records → items for the current target mode (``complete`` or ``upsert``)."""

    def __init__(self, mode: str, max_item_bytes: int) -> None:
        self.mode = mode
        self.max_item_bytes = max_item_bytes
        # complete mode: records waiting for their partner, by raw call id (insertion ordered)
        self.pending_starts: dict[tuple[bytes, bytes], tuple[_ring.Record, Token, float]] = {}
        self.pending_ends: dict[tuple[bytes, bytes], tuple[_ring.Record, Token, float]] = {}
        # starts sent on their own: their end goes to v2 call/end (bounded, oldest evicted)
        self.started_alone: collections.OrderedDict[tuple[bytes, bytes], None] = collections.OrderedDict()
        self.started_alone_max = 1_000_000
        self.extra: list[Item] = []  # items made beside the one ``route`` returns
        self.eager_starts = 0
        self.spliced = 0

    def route(self, record: _ring.Record, token: Token) -> Item | None:
        kind = record.kind
        if self.mode == "upsert" or kind == _ring.KIND_COMPLETE:
            return self._direct(record, token)
        key = (record.project, record.call_id)
        if kind == _ring.KIND_START:
            end = self.pending_ends.pop(key, None)
            if end is None:
                self.pending_starts[key] = (record, token, time.monotonic())
                return None
            return self._pair(record, token, end[0], end[1])
        if kind == _ring.KIND_END:
            start = self.pending_starts.pop(key, None)
            if start is not None:
                return self._pair(start[0], start[1], record, token)
            if key in self.started_alone:
                del self.started_alone[key]
                return self._v2_end(record, token)
            self.pending_ends[key] = (record, token, time.monotonic())
            return None
        return self._direct(record, token)

    def _pair(self, start: _ring.Record, start_token: Token, end: _ring.Record,
              end_token: Token) -> Item:
        size = len(start.payload) + len(end.payload) - end.aux
        if size > self.max_item_bytes:
            # too big together: each goes alone (the server merges them)
            self.extra.append(self._v2_end(end, end_token))
            return self._v2_start(start, start_token)
        data = b"".join((start.payload[:-1], b",", end.payload[end.aux:]))
        self.spliced += 1
        return Item(data, start, (start_token, end_token), complete_route(start.project))

    def _direct(self, record: _ring.Record, token: Token) -> Item:
        kind = record.kind
        if kind == _ring.KIND_START:
            data = b"".join((_UPSERT_START, record.payload, _UPSERT_CLOSE))
            return Item(data, record, (token,), UPSERT_ROUTE)
        if kind == _ring.KIND_END:
            data = b"".join((_UPSERT_END, record.payload, _UPSERT_CLOSE))
            return Item(data, record, (token,), UPSERT_ROUTE,
                        ends_carry_trace=bool(record.flags & FLAG_END_HAS_TRACE))
        if kind == _ring.KIND_COMPLETE:
            return Item(record.payload, record, (token,), complete_route(record.project))
        raise UnknownRecord(f"record kind {kind} has no route (written by a newer producer?)")

    def _v2_start(self, record: _ring.Record, token: Token) -> Item:
        self.eager_starts += 1
        key = (record.project, record.call_id)
        self.started_alone[key] = None
        if len(self.started_alone) > self.started_alone_max:
            self.started_alone.popitem(last=False)
        data = b"".join((_V2_START, record.payload, _V2_CLOSE))
        return Item(data, record, (token,), v2_start_route(record.project), single=True)

    def _v2_end(self, record: _ring.Record, token: Token) -> Item:
        data = b"".join((_V2_END, record.payload, _V2_CLOSE))
        return Item(data, record, (token,), v2_end_route(record.project), single=True,
                    ends_carry_trace=bool(record.flags & FLAG_END_HAS_TRACE))

    def expire(self, older_than_s: float, read_pos: dict[int, int] | None = None,
               pin_limit_bytes: int = 0, everything: bool = False) -> list[Item]:
        """Send waiting records on their own when they waited ``older_than_s``, when more
        than ``pin_limit_bytes`` of their ring were read after them (they pin its space), or
        when a flush asks for ``everything``."""
        cutoff = time.monotonic() - older_than_s
        read_pos = read_pos or {}
        items: list[Item] = []
        for table, make in ((self.pending_starts, self._v2_start), (self.pending_ends, self._v2_end)):
            for key, (record, token, seen) in list(table.items()):
                pinning = pin_limit_bytes and (
                    read_pos.get(record.slot, 0) - record.end_pos > pin_limit_bytes)
                if everything or seen <= cutoff or pinning:
                    del table[key]
                    items.append(make(record, token))
        return items

    def oldest_pending_s(self) -> float | None:
        oldest = None
        for table in (self.pending_starts, self.pending_ends):
            for _record, _token, seen in table.values():
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

    def add(self, item: Item, next_target: Callable[[], int]) -> Batch | None:
        """Add an item; returns a batch that is now full (to send), if any. A new batch is
        cut at ``next_target()`` bytes (asked once per batch)."""
        if item.single:
            return Batch(item.route, [item])
        batch = self.open.get(item.route)
        full = None
        if batch is not None and batch.size_bytes + len(item.data) + 1 > batch.target_bytes:
            full = self.open.pop(item.route)
            self.open_bytes -= full.size_bytes
            batch = None
        if batch is None:
            batch = self.open[item.route] = Batch(item.route, target_bytes=next_target())
            self.open_bytes += batch.size_bytes
        batch.add(item)
        self.open_bytes += len(item.data) + 1
        return full

    def due(self, linger_s: float, everything: bool = False) -> list[Batch]:
        cutoff = time.monotonic() - linger_s
        ready = [r for r, b in self.open.items() if everything or b.created_s <= cutoff]
        batches = [self.open.pop(r) for r in ready]
        self.open_bytes -= sum(b.size_bytes for b in batches)
        return batches

    def oldest_s(self) -> float | None:
        return min((b.created_s for b in self.open.values()), default=None)
