"""Items to size-bounded request bodies: :class:`Accumulator` collects the items of each
route into a :class:`Batch`, cut at the size target or after ``linger_ms``; a batch's body is
one join of its items' bytes, and it splits in halves or chunks when the server refuses it.
"""

from __future__ import annotations

import itertools
import operator
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from engine.ring import RUN_CALL_BYTES
from engine.wire._codec import json_error, uuid7

_BATCH_PREFIX = b'{"batch":['
_BATCH_SUFFIX = b"]}"
_ENVELOPE_BYTES = len(_BATCH_PREFIX) + len(_BATCH_SUFFIX)


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
    calls: int  # complete calls it holds: more than one for a run (the reader's RunRecord)
    cuts: bytes  # a run's: per call, its item's end offset in parts[0] and its call id

    @property
    def data(self) -> bytes:
        """The item's JSON in one piece (a copy: for a single request or a dead letter)."""
        return b"".join(self.parts[:-1])

    def each_call(self) -> Iterator[tuple[bytes, bytes]]:
        """(call id, JSON) of every call the item holds: one for most, each call of a run."""
        if not self.cuts:
            yield self.call_id, self.data
            return
        payload, start = self.parts[0], 0
        for end, call_id in _RUN_CALL.iter_unpack(self.cuts):
            yield call_id, payload[start:end]
            start = end + 1


_RUN_CALL = struct.Struct("<I16s")
assert _RUN_CALL.size == RUN_CALL_BYTES


def split_run(item: Item, at: int) -> tuple[Item, Item]:
    """A run item cut before its call ``at`` (0 < at < calls) into two run items; both keep
    its refs (the caller makes the release wait for both: ReleaseTracker.split)."""
    payload, cuts = item.parts[0], item.cuts
    cut_end = _RUN_CALL.unpack_from(cuts, (at - 1) * RUN_CALL_BYTES)[0]
    right_cuts = b"".join(
        _RUN_CALL.pack(end - cut_end - 1, call_id)
        for end, call_id in _RUN_CALL.iter_unpack(cuts[at * RUN_CALL_BYTES:]))
    left = item._replace(parts=(payload[:cut_end], item.parts[-1]), size=cut_end, calls=at,
                         cuts=cuts[:at * RUN_CALL_BYTES])
    right_payload = payload[cut_end + 1:]
    right = item._replace(parts=(right_payload, item.parts[-1]), size=len(right_payload),
                          calls=item.calls - at, cuts=right_cuts,
                          call_id=_RUN_CALL.unpack_from(right_cuts)[1])
    return left, right


def _split_to_fit(item: Item, max_bytes: int) -> list[Item]:
    """A run item larger than ``max_bytes`` as run items of at most that many (a call larger
    than that alone), in order; any other item as it is."""
    if item.calls < 2 or item.size + 1 <= max_bytes - _ENVELOPE_BYTES:
        return [item]
    left, right = split_run(item, item.calls // 2)
    return _split_to_fit(left, max_bytes) + _split_to_fit(right, max_bytes)


_ITEM_REFS = operator.attrgetter("refs")
_ITEM_PARTS = operator.attrgetter("parts")


class Batch:
    """Items for one route; ``body()`` is the request body, built by concatenation."""

    __slots__ = ("route", "items", "size_bytes", "calls", "retry_id", "attempts", "created_s",
                 "first_sent_s", "sent_s", "target_bytes", "errors_500", "run_500", "suspect",
                 "was_parked")

    def __init__(self, route: str, items: list[Item] | None = None, target_bytes: int = 0) -> None:
        self.route = route
        self.target_bytes = target_bytes  # the size it was cut at (0: made by a split)
        self.items: list[Item] = items or []
        self.size_bytes = _ENVELOPE_BYTES + sum(i.size + 1 for i in self.items)
        self.calls = sum(i.calls for i in self.items)
        self.retry_id = uuid7()
        self.attempts = 0
        self.created_s = time.monotonic()
        self.first_sent_s: float | None = None
        self.sent_s = 0.0  # when its last attempt went out (time.monotonic())
        self.errors_500 = 0  # answers 500 to it (engine/sender/_delivery.py, _isolate_500)
        self.run_500 = 0  # ... since its last answer of another kind (a 429, a reset)
        self.suspect = False  # a piece of a batch split for its 500s: split at its first
        self.was_parked = False  # counted once as not persisted (engine/sender/_persist.py)

    def add(self, item: Item) -> None:
        self.items.append(item)
        self.size_bytes += item.size + 1
        self.calls += item.calls

    def body(self) -> bytes:
        if len(self.items) == 1 and self.items[0].single:
            return self.items[0].data
        # One join of every item's pieces: the body's megabytes are copied once
        return b"".join(self.body_parts())

    def body_parts(self) -> list[bytes]:
        """The body's pieces in order (``body()`` joins them): the envelope around every
        item's pieces, the last item's separator giving way to the envelope's end."""
        pieces = [_BATCH_PREFIX]
        pieces += itertools.chain.from_iterable(map(_ITEM_PARTS, self.items))
        pieces[-1] = _BATCH_SUFFIX
        return pieces

    def joins(self, other: Batch, max_bytes: int) -> bool:
        """Whether ``other`` may join this batch in one body of at most ``max_bytes``: both
        cut by the accumulator (not pieces of a split), never sent, on one batch route."""
        return (self.attempts == 0 and other.attempts == 0 and other.route == self.route
                and self.target_bytes > 0 and other.target_bytes > 0
                and not self.items[0].single and not other.items[0].single
                and self.size_bytes + other.size_bytes - _ENVELOPE_BYTES <= max_bytes)

    def absorb(self, other: Batch) -> None:
        """``other``'s items after this batch's own, in one body (``joins`` said it may)."""
        self.items += other.items
        self.size_bytes += other.size_bytes - _ENVELOPE_BYTES
        self.calls += other.calls

    def halves(self) -> tuple[Batch, Batch]:
        """Two batches of about half the calls each (a lone run item is cut in two)."""
        items = self.items
        if len(items) == 1 and items[0].calls > 1:
            items = list(split_run(items[0], items[0].calls // 2))
        mid = len(items) // 2
        return Batch(self.route, items[:mid]), Batch(self.route, items[mid:])

    def chunks(self, max_bytes: int) -> list[Batch]:
        """Consecutive pieces of at most ``max_bytes`` each (a call larger than that goes
        alone, runs are cut to fit), in order; at least two when it holds more than one call."""
        if self.calls > 1 and self.size_bytes <= max_bytes:
            return list(self.halves())
        pieces: list[Batch] = []
        current = Batch(self.route)
        for item in itertools.chain.from_iterable(_split_to_fit(i, max_bytes) for i in self.items):
            if current.items and current.size_bytes + item.size + 1 > max_bytes:
                pieces.append(current)
                current = Batch(self.route)
            current.add(item)
        pieces.append(current)
        return pieces if len(pieces) > 1 or self.calls == 1 else list(self.halves())

    def refs(self) -> Iterator[int]:
        return itertools.chain.from_iterable(map(_ITEM_REFS, self.items))

    def holds_invalid_json(self) -> bool:
        """Whether the JSON of a call in it is not valid (looked at after a 400 only)."""
        return any(json_error(data) is not None
                   for item in self.items for _, data in item.each_call())

    def __len__(self) -> int:
        """The calls it holds (a run item holds several)."""
        return self.calls



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
            batch.calls += item.calls
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
