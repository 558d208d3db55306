"""Values the producer writes in another form, counted: NaN/inf as null, bytes as base64.

The C encoder (engine/native/_native_json.c) counts them as it meets them, at no cost to
the items that hold none. Without it, msgspec writes them silently, so :class:`PyEncoder`
looks for them after encoding, the same way the C encoder walks an item (so both count the
same values), and only when the encoded bytes or a quick scan say they may be there:

- a NaN/inf float is written ``null``: no ``null`` in the bytes, no NaN to count;
- a NaN/inf ``Decimal`` would be written ``NaN`` / ``Infinity`` by msgspec (not JSON): the C
  encoder writes ``null``, and so does this one;
- bytes-like values become ordinary-looking base64 strings: a breadth-first scan of the
  item's dicts, lists and tuples (``gc.get_referents``, in C) looks for their types.

Where the C encoder walks: the fields of the wire items, dicts whose keys are all exact
``str``, lists, tuples; every other value is msgspec's (a dict subclass, a dataclass), and
what it holds is written the same way but not counted, by either encoder.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from decimal import Decimal
from itertools import compress
from typing import Any

import msgspec

_BYTES_TYPES = frozenset((bytes, bytearray, memoryview))
_WALKED = frozenset((dict, list, tuple))
_MAX_SCAN_LEVELS = 1000  # deeper than the encoder goes: it raised before the scan


def _item_types() -> frozenset[type]:
    from engine.wire.calls import (
        CompletedCallSchemaForInsert,
        EndedCallSchemaForInsert,
        StartedCallSchemaForInsert,
    )

    return frozenset((StartedCallSchemaForInsert, EndedCallSchemaForInsert,
                      CompletedCallSchemaForInsert))


class _Counts(threading.local):
    """What PyEncoder counted in this thread; the producer takes them after each write
    (``_codec.take_counts``)."""

    nonfinite = 0
    bytes = 0


counts = _Counts()


class PyEncoder:
    """The producer's encoder where the C accelerator is not built: msgspec's bytes for
    everything, NaN/inf Decimals as null, and the C encoder's counts."""

    def __init__(self, encoder: msgspec.json.Encoder) -> None:
        self._encoder = encoder
        self._walked = _WALKED | _item_types()

    def encode(self, item: Any) -> bytes:
        payload = self._encoder.encode(item)
        if (b"null" in payload or b"NaN" in payload or b"Infinity" in payload
                or self._may_hold_bytes(item)):
            nonfinite, nbytes, decimals = self._count(item)
            if decimals:
                payload = self._encoder.encode(self._nulled(item))
            counts.nonfinite += nonfinite
            counts.bytes += nbytes
        return payload

    def _may_hold_bytes(self, item: Any) -> bool:
        walked = self._walked.__contains__
        level = [item]
        for _ in range(_MAX_SCAN_LEVELS):
            found = gc.get_referents(*level)
            types = set(map(type, found))
            if not _BYTES_TYPES.isdisjoint(types):
                return True
            if self._walked.isdisjoint(types):
                return False
            level = list(compress(found, map(walked, map(type, found))))
        return True

    def _count(self, item: Any) -> tuple[int, int, bool]:
        """(NaN/inf values, bytes-like values, whether a NaN/inf Decimal is among them)."""
        nonfinite = nbytes = 0
        decimals = False
        for leaf in self._leaves(item):
            if isinstance(leaf, float) or type(leaf) is Decimal:
                if not _finite(leaf):
                    nonfinite += 1
                    decimals = decimals or type(leaf) is Decimal
            elif type(leaf) in _BYTES_TYPES:
                nbytes += 1
        return nonfinite, nbytes, decimals

    def _leaves(self, value: Any) -> Iterator[Any]:
        """Every value the C encoder meets that is not a dict, list, tuple or wire item."""
        stack = [value]
        while stack:
            value = stack.pop()
            kind = type(value)
            if kind is dict:
                if all(type(k) is str for k in value):  # else msgspec's whole
                    stack.extend(value.values())
            elif kind is list or kind is tuple:
                stack.extend(value)
            elif kind in self._walked:  # a wire item
                stack.extend(getattr(value, f) for f in value.__struct_fields__)
            else:
                yield value

    def _nulled(self, value: Any) -> Any:
        """``value`` with every NaN/inf Decimal the C encoder meets replaced by None."""
        kind = type(value)
        if kind is dict:
            if any(type(k) is not str for k in value):
                return value
            return {k: self._nulled(v) for k, v in value.items()}
        if kind is list or kind is tuple:
            return kind(self._nulled(v) for v in value)
        if kind in self._walked:
            fields = {f: self._nulled(getattr(value, f)) for f in value.__struct_fields__}
            return msgspec.structs.replace(value, **fields)
        return None if kind is Decimal and not value.is_finite() else value


def _finite(value: float | Decimal) -> bool:
    return value.is_finite() if type(value) is Decimal else value - value == 0
