"""What the encoder could not take, found and made encodable: only after an encode failed.

The hot path encodes every item as it is; this module runs when that raised, for two
callers:

- the direct API (``call_start`` / ``call_end``): :func:`first_problem` names the field and
  what is wrong with it, for the :class:`EncodeError` the caller raises (nothing written);
- the op wrappers (``@tracer.op``, ``tracer.call``, the weave integration), which must never
  fail the user's code: :func:`sanitise_item` returns a copy of the item with every value
  the encoder cannot take replaced by a placeholder saying why, and the count per reason.

Reasons (the ``sanitised_<reason>`` counters of ``stats()["producers"]``):

- ``cycle``: a dict or list that contains itself (``"<cycle: dict contains itself>"``);
- ``bad_string``: a string with lone surrogates (they become U+FFFD, the rest is kept);
- ``unencodable``: an object with no JSON form whose ``str()`` fails too, a dict key of a
  type JSON cannot have, nesting deeper than :data:`MAX_DEPTH` (which the encoders refuse on
  the hot path: ``engine serve`` refuses a body nested past 256 levels, weave's server past
  200, and msgspec fails near 1,000);
- ``oversized``: the encoded item is over the largest request; its largest values are
  replaced, largest first, until it fits (``"<oversized: str of 33554434 bytes>"``);
- ``timestamp``: a naive or out-of-range ``started_at`` / ``ended_at``, taken as UTC or
  replaced by the time it was seen.

``nonfinite`` (NaN/inf written as null), ``bytes`` (written as base64) and ``duplicate_key``
(of the entries of a dict whose keys are written as the same text, ``{1: "a", "1": "b"}``,
one is written: the last one's value, at the first one's place) are counted by the encoder
itself, on every path: those values encode. A sanitised copy's dicts have str keys: the
walk merges and counts them.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import msgspec

from engine.common._errors import EncodeError, PayloadTooLarge
from engine.wire._codec import NO_FORM, UTC, data_form, strict_encoder
from engine.wire._depth import MAX_VALUE_DEPTH, json_depth_over
from engine.wire._forms import key_text
from engine.wire.calls import (
    CompletedCallSchemaForInsert,
    EndedCallSchemaForInsert,
    StartedCallSchemaForInsert,
)


def _probe_hook(obj: Any) -> str:
    """The encoder's fallback (str()) without its counting: the walk only asks whether a
    value encodes; the item's real encode counts what it stringifies."""
    return str(obj)


_probe = msgspec.json.Encoder(enc_hook=_probe_hook, decimal_format="number")

REASONS = ("cycle", "bad_string", "unencodable", "oversized", "nonfinite", "bytes", "timestamp",
           "duplicate_key")
MAX_DEPTH = MAX_VALUE_DEPTH
_VALUE_FIELDS = ("inputs", "attributes", "output", "summary", "otel_dump", "exception",
                 "op_name", "display_name")  # fmt: skip
_JSON_SCALARS = (bool, int, float, type(None), Decimal)


@dataclass(frozen=True)
class Problem:
    """The first value the encoder cannot take: where (``inputs['a'][0]``) and why."""

    path: str
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}: {self.detail}" if self.path else (
            f"{self.reason}: {self.detail}")


class _Stop(Exception):
    """first_problem's way out of the walk at the first problem."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem


class _Walk:
    """One pass over a value: a copy with every problem replaced (and counted), or, with
    ``stop_at_first``, the first problem raised as _Stop."""

    def __init__(self, strict: bool, stop_at_first: bool) -> None:
        self.encode = (strict_encoder if strict else _probe).encode
        self.stop_at_first = stop_at_first
        self.counts: Counter[str] = Counter()
        self._active: set[int] = set()  # ids of the containers on the current path
        self._other_keys = 0  # dicts on the path with keys other than str: msgspec writes them

    def problem(self, path: str, reason: str, detail: str, placeholder: Any) -> Any:
        if self.stop_at_first:
            raise _Stop(Problem(path, reason, detail))
        self.counts[reason] += 1
        return placeholder

    def value(self, value: Any, path: str, depth: int) -> Any:
        kind = type(value)
        if kind is str or isinstance(value, str):
            return self.string(value, path)
        if isinstance(value, _JSON_SCALARS):
            if isinstance(value, Decimal) and not value.is_finite():
                # the encoders write null for one they meet; one in a dict with other keys
                # than str is msgspec's to write, which refuses it (before 0.23: NaN)
                if self.stop_at_first and not self._other_keys:
                    return value  # written null: not what failed
                return self.problem(path, "nonfinite", f"Decimal {value} in a dict whose "
                                    "keys are not all str (use str keys)", None)
            return value
        if isinstance(value, (dict, list, tuple, set, frozenset)):
            return self.container(value, path, depth)
        return self.other(value, path, depth)

    def string(self, text: str, path: str) -> str:
        if text.isascii():
            return text
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            fixed = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            return self.problem(path, "bad_string", "lone surrogates (written as U+FFFD)",
                                fixed)
        return text

    def container(self, value: Any, path: str, depth: int) -> Any:
        name = type(value).__name__
        if id(value) in self._active:
            return self.problem(path, "cycle", f"{name} contains itself",
                                f"<cycle: {name} contains itself>")
        if depth >= MAX_DEPTH:
            return self.too_deep(path)
        self._active.add(id(value))
        try:
            if isinstance(value, dict):
                return self.mapping(value, path, depth)
            return [self.value(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
        finally:
            self._active.discard(id(value))

    def mapping(self, value: dict, path: str, depth: int) -> dict:
        other_keys = any(type(key) is not str for key in value)
        # keys written as the same text: the last one's value at the first one's place, as
        # the encoders write it (engine/wire/_lossy.py unique_keys)
        entries = {self.key(key, path): item for key, item in list(value.items())}
        if len(entries) < len(value) and not self.stop_at_first:
            self.counts["duplicate_key"] += len(value) - len(entries)
        self._other_keys += other_keys
        try:
            return {key_text: self.value(item, f"{path}[{key_text!r}]", depth + 1)
                    for key_text, item in entries.items()}
        finally:
            self._other_keys -= other_keys

    def key(self, key: Any, path: str) -> str:
        if isinstance(key, str):
            return self.string(key, f"{path} key {key!r}")
        try:  # the text the encoder makes of it (a number, or the str() of other keys)
            text = key_text(key)  # a bool's or float's: weave's, not msgspec's
            if text is None:
                (text,) = msgspec.json.decode(self.encode({key: None}))
            return text
        except UnicodeEncodeError:
            return self.string(str(key), f"{path} key")
        except Exception as exc:  # the key has no JSON form and no usable str()
            name = type(key).__name__
            return self.problem(f"{path} key", "unencodable", f"{name} key: {_brief(exc)}",
                                f"<unencodable {name} key>")

    def too_deep(self, path: str) -> str:
        return self.problem(path, "unencodable", f"nested deeper than {MAX_DEPTH} levels",
                            f"<unencodable: nested deeper than {MAX_DEPTH} levels>")

    def other(self, value: Any, path: str, depth: int) -> Any:
        """An object the encoder writes as its data form (a pydantic model: that data,
        walked as the object's own, so data that holds the object is a cycle), takes on its
        own terms (dataclass, enum, UUID, Struct, datetime, ``msgspec.Raw``) or stringifies:
        kept if it encodes alone within the levels left (``depth`` is its own), else a
        placeholder; a ``msgspec.Raw`` is kept as the encoders write it."""
        form = data_form(value)
        if form is not NO_FORM:
            return self.data(value, form, path, depth)
        if type(value) is msgspec.Raw:  # its writer's JSON, written as it is (not checked)
            return value
        try:
            if json_depth_over(self.encode(value), MAX_DEPTH - depth):
                return self.too_deep(path)
            return value
        except RecursionError:
            name = type(value).__name__
            return self.problem(path, "cycle", f"{name} contains itself",
                                f"<cycle: {name} contains itself>")
        except UnicodeEncodeError:
            name = type(value).__name__
            return self.problem(path, "bad_string", f"{name} gives a string with lone "
                                "surrogates", f"<bad_string: {name} gives lone surrogates>")
        except Exception as exc:
            name = type(value).__name__
            return self.problem(path, "unencodable", f"{name}: {_brief(exc)}",
                                f"<unencodable {name}: {_brief(exc)}>")


    def data(self, value: Any, form: Any, path: str, depth: int) -> Any:
        if id(value) in self._active:
            name = type(value).__name__
            return self.problem(path, "cycle", f"{name} contains itself",
                                f"<cycle: {name} contains itself>")
        self._active.add(id(value))
        try:
            return self.value(form, path, depth)
        finally:
            self._active.discard(id(value))


def _brief(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:
        text = ""
    text = text.encode("utf-8", "replace").decode()[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_timestamp(value: Any) -> str | None:
    """What is wrong with a call's timestamp for the wire (None: nothing). It must be an
    aware datetime whose UTC instant exists (``0001-01-01T00:00+14:00`` does not)."""
    if not isinstance(value, _dt.datetime):
        return f"{type(value).__name__} is not a datetime"
    if value.tzinfo is UTC:
        return None
    try:
        offset = value.utcoffset()
    except Exception as exc:  # a tzinfo whose utcoffset() raises
        return f"its tzinfo's utcoffset() raised {_brief(exc)}"
    if offset is None:
        return (f"{value.isoformat()} is naive (no tzinfo): use an aware datetime, "
                "e.g. datetime.now(timezone.utc)")
    try:
        value.astimezone(UTC)
    except OverflowError:
        return f"{value.isoformat()} is out of range once in UTC"
    return None


_END_TIMES = (("started_at", True), ("ended_at", False))
_COMPLETE_TIMES = (("started_at", False), ("ended_at", False))
_START_TIMES = (("started_at", False),)
_TIME_FIELDS = {EndedCallSchemaForInsert: _END_TIMES,
                CompletedCallSchemaForInsert: _COMPLETE_TIMES,
                StartedCallSchemaForInsert: _START_TIMES}


def _time_fields(item: Any) -> tuple[tuple[str, bool], ...]:
    """(field, may be None) of the timestamps ``item`` carries."""
    if isinstance(item, EndedCallSchemaForInsert):
        return _END_TIMES
    if isinstance(item, CompletedCallSchemaForInsert):
        return _COMPLETE_TIMES
    return _START_TIMES


def time_problem(item: Any) -> Problem | None:
    """The first of ``item``'s timestamps the wire cannot carry, or None (cheap when they
    are in UTC, as the tracer's own are: it runs on every call of the general path)."""
    for name, optional in _TIME_FIELDS.get(type(item)) or _time_fields(item):
        value = getattr(item, name)
        if value is None:
            if optional:
                continue
        elif type(value) is _dt.datetime and value.tzinfo is UTC:
            continue
        wrong = check_timestamp(value)
        if wrong is not None:
            return Problem(name, "timestamp", wrong)
    return None


def first_problem(item: msgspec.Struct, strict: bool) -> Problem | None:
    """The first field of ``item`` the encoder cannot take, or None."""
    problem = time_problem(item)
    if problem is not None:
        return problem
    walk = _Walk(strict, stop_at_first=True)
    try:
        for name in _VALUE_FIELDS:
            if hasattr(item, name):
                walk.value(getattr(item, name), name, 0)
    except _Stop as stop:
        return stop.problem
    return None


def invalid_item(item: Any, exc: BaseException, strict: bool, what: str) -> EncodeError:
    """The EncodeError for ``exc``, raised while ``item`` was converted or encoded: the
    field and what is wrong with it, found again on this (slow) path."""
    if isinstance(exc, EncodeError) and exc.field:
        return exc
    if isinstance(item, dict):  # a dict the one-call path converted itself: look at that
        with contextlib.suppress(msgspec.ValidationError, KeyError):
            item = msgspec.convert(item, _ITEM_TYPES[what], strict=False)
    if isinstance(exc, PayloadTooLarge):
        if not isinstance(item, msgspec.Struct):
            return exc
        return PayloadTooLarge(exc.call_id, exc.size_bytes, exc.limit_bytes,
                               largest_field(item), exc.limit_setting)
    call_id = _call_id(item)
    problem = first_problem(item, strict) if isinstance(item, msgspec.Struct) else None
    if problem is None:
        problem = Problem(_field_named_in(exc), _reason_of(exc), _brief(exc))
    return EncodeError(f"{what} {call_id}: {problem}", field=problem.path,
                       reason=problem.reason)


_ITEM_TYPES = {"start": StartedCallSchemaForInsert, "end": EndedCallSchemaForInsert,
               "call": CompletedCallSchemaForInsert}


def largest_field(item: msgspec.Struct) -> str:
    """The value field of ``item`` that takes the most bytes encoded."""
    sizes = {name: len(_probe.encode(getattr(item, name))) for name in _VALUE_FIELDS
             if hasattr(item, name)}  # fmt: skip
    return max(sizes, key=sizes.__getitem__)


def _call_id(item: Any) -> str | None:
    call_id = item.get("id") if isinstance(item, dict) else getattr(item, "id", None)
    return call_id if isinstance(call_id, str) else None


def _reason_of(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "cycle"
    if isinstance(exc, UnicodeError):
        return "bad_string"
    if isinstance(exc, (msgspec.ValidationError, ValueError)) and not isinstance(exc, TypeError):
        return "invalid"
    return "unencodable"


_MSGSPEC_PATH = re.compile(r"at `\$\.?([^`]*)`")
_NAMED_FIELD = re.compile(r"^(?:start|end|call)\.(\w+):")


def _field_named_in(exc: BaseException) -> str:
    """The field a conversion or id error names (``$.inputs`` -> ``inputs``), or ''."""
    text = str(exc)
    match = _MSGSPEC_PATH.search(text) or _NAMED_FIELD.search(text)
    return match.group(1) if match else ""


def sanitise_item(item: msgspec.Struct, strict: bool,
                  max_payload: int) -> tuple[msgspec.Struct, Counter[str]]:
    """A copy of ``item`` that encodes within ``max_payload`` bytes, and what was replaced
    (count per reason). Values that encode are kept as they are."""
    walk = _Walk(strict, stop_at_first=False)
    changes: dict[str, Any] = {}
    for name, optional in _time_fields(item):
        value = getattr(item, name)
        if (value is not None or not optional) and check_timestamp(value) is not None:
            walk.counts["timestamp"] += 1
            changes[name] = _fixed_timestamp(value)
    for name in _VALUE_FIELDS:
        if hasattr(item, name):
            changes[name] = _field(walk, getattr(item, name), name)
    clean = msgspec.structs.replace(item, **changes)
    return _fit(clean, walk.encode, max_payload, walk.counts), walk.counts


def _field(walk: _Walk, value: Any, name: str) -> Any:
    try:
        return walk.value(value, name, 0)
    except RecursionError:  # the user's own stack was nearly full: the whole field goes
        walk.counts["unencodable"] += 1
        return f"<unencodable: {name} nested too deep to inspect>"


def _fixed_timestamp(value: Any) -> _dt.datetime:
    if isinstance(value, _dt.datetime) and value.tzinfo is None:
        try:
            return value.replace(tzinfo=UTC)  # naive: the clock tracing code reads is UTC
        except Exception:
            pass
    return _dt.datetime.now(UTC)


def _fit(item: msgspec.Struct, encode: Callable[[Any], bytes], max_payload: int,
         counts: Counter[str]) -> msgspec.Struct:
    """Replace the largest values, largest first, until the item encodes within the limit."""
    excess = len(encode(item)) - max_payload
    rounds = 0
    while excess > 0:
        sizes = {name: _size(encode, getattr(item, name)) for name in _VALUE_FIELDS
                 if hasattr(item, name) and getattr(item, name) is not None}  # fmt: skip
        name = max(sizes, key=sizes.__getitem__)
        value = getattr(item, name)
        rounds += 1
        if rounds > _MAX_FIT_ROUNDS:  # placeholders of countless small values: the field goes
            value = _oversized(value, sizes[name], counts)
        else:
            value = _shrunk(value, sizes[name], excess, encode, counts)
        item = msgspec.structs.replace(item, **{name: value})
        excess = len(encode(item)) - max_payload
    return item


_PLACEHOLDER_BYTES = 80  # room an oversized placeholder itself takes, about
_MAX_FIT_ROUNDS = 16


def _shrunk(value: Any, size: int, excess: int, encode: Callable[[Any], bytes],
            counts: Counter[str]) -> Any:
    """``value`` with the least replaced that frees ``excess`` bytes: inside its largest
    child when that alone is enough, else its largest children, largest first (a leaf:
    itself)."""
    children = _children(value)
    if not children:
        return _oversized(value, size, counts)
    ranked = sorted(((key, child, _size(encode, child)) for key, child in children),
                    key=lambda entry: -entry[2])
    key, child, child_size = ranked[0]
    if child_size > excess + _PLACEHOLDER_BYTES:
        return _replaced(value, {key: _shrunk(child, child_size, excess, encode, counts)})
    worth = [entry for entry in ranked if entry[2] > _PLACEHOLDER_BYTES]
    if sum(n - _PLACEHOLDER_BYTES for _, _, n in worth) < excess:
        return _oversized(value, size, counts)  # its parts are too small to free enough
    replacements: dict[Any, Any] = {}
    freed = 0
    for key, child, child_size in worth:
        if freed >= excess:
            break
        replacements[key] = _oversized(child, child_size, counts)
        freed += child_size - _PLACEHOLDER_BYTES
    return _replaced(value, replacements)


def _oversized(value: Any, size: int, counts: Counter[str]) -> str:
    counts["oversized"] += 1
    return f"<oversized: {type(value).__name__} of {size} bytes>"


def _replaced(value: Any, replacements: dict[Any, Any]) -> Any:
    if isinstance(value, dict):
        return {**value, **replacements}
    return [replacements.get(i, v) for i, v in enumerate(value)]


def _children(value: Any) -> list[tuple[Any, Any]]:
    if isinstance(value, dict):
        return list(value.items())
    if isinstance(value, list):
        return list(enumerate(value))
    return []


def _size(encode: Callable[[Any], bytes], value: Any) -> int:
    return len(encode(value))


