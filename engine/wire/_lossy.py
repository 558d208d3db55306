"""Values the producer writes in another form, counted: NaN/inf as null, bytes as base64, a
key written twice once; and values written as weave 0.54 stores them where msgspec writes
them otherwise (a bool or float dict key, a plain enum member), not counted.

The C encoder (engine/native/_native_json.c) counts them as it meets them, at no cost to
the items that hold none. Without it, msgspec writes them silently, so :class:`PyEncoder`
looks for them after encoding, the same way the C encoder walks an item (so both count the
same values), and only when a quick look says they may be there: one pass over the values of
the item's dicts, lists, tuples and wire items that lets the plain ones (str, int, bool,
None, finite floats, datetimes) by with a type test and stops at the first other one -- a
bytes-like value, a ``Decimal``, a float subclass, a NaN or an infinity, a dict subclass, a
plain enum member. Looking at each value from Python costs less than batching the look per
container or per level in C (``set(map(type, ...))``, ``gc.get_referents`` by level): a
call's containers hold a few values each. (Scanning the encoded bytes for ``null``, ``NaN``
and ``Infinity`` cost more: three searches of every payload, and bytes-like values leave no
mark there.)
What is counted:

- a NaN/inf float is written ``null``;
- a NaN/inf ``Decimal`` would be written ``NaN`` / ``Infinity`` by msgspec < 0.23 (not
  JSON) and is refused by 0.23: the C encoder writes ``null``, and so does this one;
- bytes-like values become ordinary-looking base64 strings;
- of the entries of a dict whose keys are written as the same text (``1`` and ``"1"``,
  ``True`` and ``"true"``: only a dict with keys other than str, or a dict subclass, has
  them), one is written (:func:`unique_keys`): msgspec wrote the key twice, and the server
  kept the last silently.

What is written as weave writes it (:func:`unique_keys`, nothing counted): a bool key as
``true`` / ``false`` (msgspec: ``True``), a float key as its ``str()`` (``1e+20``; msgspec:
``1e20``), a plain enum member (not an int, float or str one) as its repr (msgspec: its
value).

Where the C encoder walks: the fields of the wire items, dicts whose keys are all exact
``str``, lists, tuples; a dict with other keys and a dict subclass go through
:func:`unique_keys` to msgspec; every other value is msgspec's (a dataclass, a Struct), and
what it holds is written by msgspec's rules and not counted, by either encoder.
"""

from __future__ import annotations

import datetime as _dt
import gc
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import msgspec

from engine.wire._depth import MAX_VALUE_DEPTH, json_depth_over_py
from engine.wire._forms import enum_text, is_plain_enum, key_text, str_or_placeholder

_MAX_ITEM_DEPTH = MAX_VALUE_DEPTH + 1  # a field's value nests inside its item's object
_BYTES_TYPES = frozenset((bytes, bytearray, memoryview))
_LOSSY_BASES = (float, Decimal, bytes, bytearray, memoryview)  # a subclass is written as its base
# the values the quick look passes by at a glance (floats are looked at apart); the type of a
# wire item is among what gc.get_referents gives for it
_PLAIN = frozenset((str, int, bool, type(None), _dt.datetime, type(msgspec.Struct)))
_WALKED = frozenset((dict, list, tuple))
_MAX_TYPES_KEPT = 256
# the producer's text for a key msgspec hands its hook (nothing counted: the item's encode
# counts it)
_KEY_ENCODER = msgspec.json.Encoder(enc_hook=str_or_placeholder, decimal_format="number")


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
    duplicate_key = 0


counts = _Counts()


def unique_keys(value: Any, levels: int) -> tuple[Any, int]:
    """``value`` as weave 0.54 stores it, for what msgspec writes whole (a dict with keys other
    than str, a dict subclass): the entries of each of its dicts whose keys are written as
    the same text (``{1: "a", "1": "b"}``, ``{True: "a", "true": "b"}``) made one, the last
    one's value at the first one's place (``{"1": "b"}``), as weave and a JSON reader keep
    it; a bool or float key as weave's text (``true``, ``1e+20``: :func:`key_text`), a
    plain enum member as its repr (:func:`enum_text`); and how many values were dropped.
    ``value`` itself when nothing changed. It goes into dicts (subclasses too: a plain dict
    comes back when one changes), lists and tuples, ``levels`` deep (the encoders refuse
    deeper values; a cycle is msgspec's error). The C encoder calls it for each dict with a
    key that is not an exact str and each dict subclass it meets, before msgspec writes it.
    """
    kind = type(value)
    if levels < 0:
        return value, 0
    if isinstance(value, dict):
        return _unique_dict(value, levels)
    if kind is list or kind is tuple:
        dropped = 0
        items = []
        for item in value:
            new, n = unique_keys(item, levels - 1)
            dropped += n
            items.append(new)
        same = all(new is old for new, old in zip(items, value))
        return (value, 0) if same else (kind(items), dropped)
    if is_plain_enum(kind):
        return enum_text(value), 0
    return value, 0


def _unique_dict(value: dict, levels: int) -> tuple[Any, int]:
    first: dict[Any, Any] = {}  # key text -> the key written
    entries = list(value.items())  # a key's str() may change the dict: msgspec's error
    kept = {first.setdefault(_key_text(key), key): item for key, item in entries}
    dropped = len(entries) - len(kept)
    changed = bool(dropped)
    merged = {}
    for key, item in kept.items():  # what is dropped is not looked into
        text = key_text(key)
        new, n = unique_keys(item, levels - 1)
        merged[key if text is None else text] = new
        dropped += n
        changed = changed or text is not None or new is not item
    return (merged, dropped) if changed else (value, 0)


def _key_text(key: Any) -> Any:
    """The text a dict key is written as (str keys, int keys: no call)."""
    kind = type(key)
    if kind is str:
        return key
    try:
        if kind is int:
            return str(key)
        text = key_text(key)
        if text is None:
            (text,) = msgspec.json.decode(_KEY_ENCODER.encode({key: None}))
    except Exception:  # not a key msgspec writes: the item's encode fails on it
        return object()
    return text


class PyEncoder:
    """The producer's encoder where the C accelerator is not built: msgspec's bytes for
    everything, NaN/inf Decimals as null, and the C encoder's counts; like it, it refuses
    (``ValueError``) an item whose values nest deeper than ``MAX_VALUE_DEPTH`` (looked for
    in the bytes: two counts of brackets, a scan only when there are that many, and a walk
    of the values only when the scan finds it that deep)."""

    def __init__(self, encoder: msgspec.json.Encoder) -> None:
        self._encoder = encoder
        self._items = _item_types()
        self._walked = _WALKED | self._items
        # other types seen, and whether they are (subclasses of) what is written otherwise
        self._lossy_type: dict[type, bool] = {}

    def encode(self, item: Any) -> bytes:
        try:
            payload = self._encoder.encode(item)
            nulled = False
        except ValueError:
            # msgspec >= 0.23 refuses a NaN/inf Decimal as a number (older ones write NaN):
            # written null, as the C encoder does. Any other error comes back from this
            # second encode; its success also shows ``item`` is a finite tree to walk.
            payload = self._encoder.encode(self._nulled(item))
            nulled = True
        if json_depth_over_py(payload, _MAX_ITEM_DEPTH) and self._nests_deeper(
                item, _MAX_ITEM_DEPTH):  # the bytes' look counts a Raw's levels too
            raise ValueError(f"a value is nested deeper than {MAX_VALUE_DEPTH} levels")
        if nulled or self._may_be_lossy(item):
            nonfinite, nbytes, rewritten, dropped = self._count(item)
            if rewritten and not nulled:
                payload = self._encoder.encode(self._nulled(item))
            counts.nonfinite += nonfinite
            counts.bytes += nbytes
            counts.duplicate_key += dropped
        return payload

    def _nests_deeper(self, value: Any, levels: int) -> bool:
        """Whether ``value`` nests more than ``levels`` levels as the C encoder counts them:
        it walks dicts with str keys, lists, tuples and wire items, does not count a
        ``msgspec.Raw``'s levels (its writer's JSON: engine relay and ingest check it), and
        looks at the bytes msgspec writes for anything else."""
        kind = type(value)
        if kind is dict and all(type(key) is str for key in value):
            children: Any = value.values()
        elif kind is list or kind is tuple:
            children = value
        elif kind in self._items:
            children = [getattr(value, name) for name in value.__struct_fields__]
        elif kind in _PLAIN or kind is float or kind is msgspec.Raw:
            return False
        else:
            return json_depth_over_py(self._encoder.encode(value), levels)
        return levels == 0 or any(self._nests_deeper(child, levels - 1) for child in children)

    def _may_be_lossy(self, item: Any) -> bool:
        """False when ``item`` surely holds nothing :meth:`_count` would count or rewrite:
        every value in its containers looked at once, by type, and the keys of a dict with
        keys other than str (a superset of what ``_count`` walks: it also enters dicts with
        keys other than str). It runs only after ``item`` encoded, so it is a finite tree no
        deeper than msgspec goes."""
        plain, items, lossy_type = _PLAIN, self._items, self._lossy_type
        referents = gc.get_referents
        stack = [referents(item)] if type(item) in items else [(item,)]
        pop, push = stack.pop, stack.append
        while stack:
            for value in pop():
                kind = type(value)
                if kind in plain:
                    continue
                if kind is dict:
                    try:
                        "".join(value)  # raises at a key that is no str: less than a loop
                    except TypeError:
                        if unique_keys(value, MAX_VALUE_DEPTH)[0] is not value:
                            return True
                    push(value.values())
                elif kind is list or kind is tuple:
                    push(value)
                elif kind is float:
                    if value - value:  # NaN for NaN and +-inf, 0.0 for the rest
                        return True
                elif kind in items:
                    push(referents(value))
                else:
                    lossy = lossy_type.get(kind)
                    if lossy is None:
                        if len(lossy_type) >= _MAX_TYPES_KEPT:  # types made on the fly
                            lossy_type.clear()
                        lossy = lossy_type[kind] = (issubclass(kind, _LOSSY_BASES)
                                                    or issubclass(kind, dict)
                                                    or is_plain_enum(kind))
                    if lossy:
                        return True
        return False

    def _count(self, item: Any) -> tuple[int, int, bool, int]:
        """(NaN/inf values, bytes-like values, whether :meth:`_nulled` writes ``item``
        otherwise (a NaN/inf Decimal, a plain enum member, a dict :func:`unique_keys`
        changes), values of dicts dropped by :func:`unique_keys`)."""
        nonfinite = nbytes = dropped = 0
        rewritten = False
        for leaf in self._leaves(item):
            if isinstance(leaf, dict):  # keys other than str, a subclass: msgspec's whole
                merged, n = unique_keys(leaf, MAX_VALUE_DEPTH)
                dropped += n
                rewritten = rewritten or merged is not leaf
            elif isinstance(leaf, float) or type(leaf) is Decimal:
                if not _finite(leaf):
                    nonfinite += 1
                    rewritten = rewritten or type(leaf) is Decimal
            elif type(leaf) in _BYTES_TYPES:
                nbytes += 1
            elif is_plain_enum(type(leaf)):
                rewritten = True
        return nonfinite, nbytes, rewritten, dropped

    def _leaves(self, value: Any) -> Iterator[Any]:
        """Every value the C encoder meets that is not a dict with str keys, list, tuple or
        wire item (a dict with other keys, a dict subclass: the dict, msgspec's whole)."""
        stack = [value]
        while stack:
            value = stack.pop()
            kind = type(value)
            if kind is dict:
                if all(type(k) is str for k in value):
                    stack.extend(value.values())
                else:
                    yield value
            elif kind is list or kind is tuple:
                stack.extend(value)
            elif kind in self._walked:  # a wire item
                stack.extend(getattr(value, f) for f in value.__struct_fields__)
            else:
                yield value

    def _nulled(self, value: Any) -> Any:
        """``value`` with every NaN/inf Decimal the C encoder meets replaced by None, each
        plain enum member by its repr, and each dict with keys other than str or of a
        subclass of dict as :func:`unique_keys` makes it."""
        kind = type(value)
        if kind is dict and all(type(k) is str for k in value):
            return {k: self._nulled(v) for k, v in value.items()}
        if isinstance(value, dict) or is_plain_enum(kind):
            return unique_keys(value, MAX_VALUE_DEPTH)[0]
        if kind is list or kind is tuple:
            return kind(self._nulled(v) for v in value)
        if kind in self._walked:
            fields = {f: self._nulled(getattr(value, f)) for f in value.__struct_fields__}
            return msgspec.structs.replace(value, **fields)
        return None if kind is Decimal and not value.is_finite() else value


def _finite(value: float | Decimal) -> bool:
    return value.is_finite() if type(value) is Decimal else value - value == 0
