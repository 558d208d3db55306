"""Hypothesis strategies for request bodies: valid shapes from a route's request Struct
(``msgspec.inspect``), with hostile values mixed in at every level.

A body is built as a tree of Python values and :class:`Text` leaves (JSON text written
verbatim: nesting deeper than any Python encoder would recurse, lone surrogates), then
encoded by :func:`encode`. The hostile values are the ones that once broke the server:
nesting 1,000+ deep, integers at and past 2^63 and 2^64, timestamps whose UTC time is
outside years 1..9999, lists of 20,000 values, wrong kinds, unknown keys, missing fields.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import msgspec
from hypothesis import strategies as st

PROJECTS = ("fz/p1", "fz/p2")
_IDS = ("a", "b", "01930000-0000-7000-8000-000000000001", "")


@dataclass(frozen=True)
class Text:
    """JSON text placed into the body as is."""

    json: str


def encode(value: Any) -> bytes:
    return _text(value).encode("utf-8", "surrogatepass")


def _text(value: Any) -> str:
    if isinstance(value, Text):
        return value.json
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_text(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def _deep(depth: int, opener: str) -> Text:
    closer = {"[": "]", '{"k":': "}"}[opener]
    return Text(opener * depth + "0" + closer * depth)


_HUGE_INTS = (2**63 - 1, 2**63, -(2**63) - 1, 2**64, 2**70, -(2**90), 10**400)
hostile_values = st.one_of(
    st.sampled_from(_HUGE_INTS),
    st.builds(_deep, st.sampled_from([200, 257, 999, 1000, 5000]), st.sampled_from(["[", '{"k":'])),
    st.sampled_from([Text('"\\ud800"'), Text("1e400"), Text("-0.0"), None, True, "", {}, []]),
    st.sampled_from(["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
                     "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", "2026-13-45T99:00:00Z",
                     "not a time"]),  # fmt: skip
    st.builds(lambda n: ["x"] * n, st.sampled_from([1000, 10_001, 20_000])),
)
json_leaves = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))  # fmt: skip
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _times() -> st.SearchStrategy[str]:
    moments = st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(2100, 1, 1))
    return moments.map(lambda t: t.isoformat() + "Z")


def _for_type(info: msgspec.inspect.Type, depth: int) -> st.SearchStrategy[Any]:
    """A valid value of ``info`` or, now and then, a hostile one."""
    return st.one_of(_valid(info, depth), _valid(info, depth), hostile_values)


def _valid(info: msgspec.inspect.Type, depth: int) -> st.SearchStrategy[Any]:
    inspect = msgspec.inspect
    if isinstance(info, inspect.StructType) and depth < 4:
        return _struct(info, depth + 1)
    if isinstance(info, inspect.UnionType):
        return st.one_of([_valid(t, depth) for t in info.types])
    if isinstance(info, (inspect.ListType, inspect.SetType, inspect.FrozenSetType, inspect.VarTupleType)):
        return st.lists(_valid(info.item_type, depth + 1), max_size=3)
    if isinstance(info, inspect.DictType):
        return st.dictionaries(st.text(max_size=8), _valid(info.value_type, depth + 1), max_size=3)
    if isinstance(info, inspect.LiteralType):
        return st.sampled_from(info.values)
    if isinstance(info, inspect.IntType):
        low = 0 if info.ge is not None and info.ge >= 0 else -5
        return st.integers(low, 50)
    if isinstance(info, inspect.FloatType):
        return st.floats(-1e6, 1e6)
    if isinstance(info, inspect.BoolType):
        return st.booleans()
    if isinstance(info, inspect.NoneType):
        return st.none()
    if isinstance(info, inspect.DateTimeType):
        return _times()
    if isinstance(info, inspect.StrType):
        return st.one_of(st.sampled_from(PROJECTS + _IDS), st.text(max_size=12))
    return json_values  # Any, Raw and the rest: arbitrary JSON


def _struct(info: msgspec.inspect.StructType, depth: int) -> st.SearchStrategy[dict]:
    """Valid fields, but for at most one of them (per struct level) which may be hostile:
    a body full of hostile values would stop at the first check and test nothing else."""
    fields = {}
    for field in info.fields:
        valid, maybe_hostile = _valid(field.type, depth), _for_type(field.type, depth)
        if field.name == "project_id":
            valid = st.sampled_from(PROJECTS)
        fields[field.encode_name] = (valid, maybe_hostile, field.required)
    names = list(fields)
    tag = {info.tag_field: info.tag} if info.tag_field else {}

    @st.composite
    def build(draw: st.DrawFn) -> dict:
        body = dict(tag)
        odd_one = draw(st.sampled_from(names)) if names and draw(st.booleans()) else None
        for name, (valid, maybe_hostile, required) in fields.items():
            if name == odd_one:
                body[name] = draw(maybe_hostile)
            elif required or draw(st.booleans()):
                body[name] = draw(valid)
        roll = draw(st.integers(0, 30))  # hypothesis favours 0 and 30: the odd cases sit between
        if roll == 17:
            body["unknown_field"] = 1
        elif roll == 18 and names:
            body.pop(names[0], None)  # maybe a required field missing
        return body

    return build()


def bodies(request_type: Any) -> st.SearchStrategy[bytes]:
    """Bodies for a route whose request Struct is ``request_type`` (None: any JSON)."""
    shaped = _valid(msgspec.inspect.type_info(request_type), 0) if request_type else json_values
    broken = st.sampled_from([b"", b"{", b"[]", b"null", b'{"a":', b"\xff\xfe{}", b"{}" * 3])
    return st.one_of(shaped.map(encode), shaped.map(encode), shaped.map(encode), broken,
                     hostile_values.map(encode))  # fmt: skip
