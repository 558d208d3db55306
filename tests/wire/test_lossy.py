"""NaN/inf and bytes-like values: the same bytes and the same counts with and without C.

The C encoder counts them as it meets them (engine/native/_native_json.c); the pure-Python
encoder (engine/wire/_lossy.py) finds the same ones after msgspec wrote the item. Both
write a NaN/inf Decimal as null, where msgspec alone would write ``NaN`` (not JSON; before
0.23) or refuse it (0.23).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import enum
import math
from decimal import Decimal

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine.producer._tracer  # noqa: F401  (registers the wire insert types' plans)
from engine.native import _accel
from engine.wire import _codec, _lossy
from engine.wire._depth import MAX_VALUE_DEPTH
from engine.wire.calls import EndedCallSchemaForInsert, StartedCallSchemaForInsert

native = _accel.native
pytestmark = pytest.mark.skipif(native is None, reason="engine.native._native is not built here")
PY_ENCODER = _lossy.PyEncoder(_codec.producer_encoder)


class Real(float):
    """A float subclass (numpy.float64 is one): msgspec writes it, NaN as null."""


@dataclasses.dataclass
class Holder:  # msgspec's, with what it holds: written the same, counted by neither
    value: object


def _encoded(encode, item) -> bytes | str:
    """The bytes, or the error's type and text: a NaN/inf Decimal that only msgspec meets
    (in a dict with other keys than str) is ``NaN`` from msgspec < 0.23 and refused by
    0.23, by both encoders alike."""
    try:
        return encode(item)
    except ValueError as exc:
        return f"ValueError: {exc}"


def both(item) -> tuple[bytes | str, tuple[int, ...], bytes | str, tuple[int, ...]]:
    """Each encoder's bytes and counts: (nonfinite, bytes, duplicate_key)."""
    _codec.take_counts()
    c_bytes = _encoded(lambda it: native.encode(_codec.producer_encoder.encode, it), item)
    c_counts = native.take_counts()
    py_bytes = _encoded(PY_ENCODER.encode, item)
    py_counts = (_lossy.counts.nonfinite, _lossy.counts.bytes, _lossy.counts.duplicate_key)
    _codec.take_counts()
    return c_bytes, c_counts, py_bytes, py_counts


def _start(inputs) -> StartedCallSchemaForInsert:
    return StartedCallSchemaForInsert(
        project_id="e/p", id="0190a0f0-0000-7000-8000-000000000001", op_name="op",
        trace_id="0190a0f0-0000-7000-8000-000000000002", attributes={"a": math.nan},
        started_at=dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc), inputs=inputs)


def test_each_kind_is_written_and_counted_alike():
    inputs = {"nan": math.nan, "inf": [math.inf, -math.inf], "ok": 0.5, "none": None,
              "dec": (Decimal("NaN"), Decimal("-Infinity"), Decimal("sNaN"), Decimal("1.5")),
              "raw": [b"\x00\xff", bytearray(b"ab"), memoryview(b"xyz")], "sub": Real("nan"),
              "int_keys": {1: math.nan, 2: b"no"}, "held": Holder(b"no"), "str": "NaN"}
    c_bytes, c_counts, py_bytes, py_counts = both(_start(inputs))
    assert c_bytes == py_bytes
    assert c_counts == py_counts == (1 + 2 + 3 + 1 + 1, 3, 0)  # attributes' NaN too
    decoded = msgspec.json.decode(c_bytes)  # valid JSON: no bare NaN
    assert decoded["inputs"]["dec"] == [None, None, None, 1.5]
    assert decoded["inputs"]["raw"] == ["AP8=", "YWI=", "eHl6"]
    assert decoded["inputs"]["int_keys"] == {"1": None, "2": "bm8="}


@pytest.mark.parametrize("value", [math.nan, -math.inf, Real("inf"), Decimal("NaN"), b"x",
                                   bytearray(b"y"), memoryview(b"z")])
def test_one_lossy_value_alone_deep_among_clean_ones_is_found(value):
    # the pure-Python encoder's quick look must not miss a single one the C encoder counts
    inputs = {"ok": [1.5, 2.5, {"deep": [{"x": 1e308}, {"y": [0.25, ("t", [value])]}]}]}
    item = _start(inputs)
    item.attributes = {}
    assert PY_ENCODER._may_be_lossy(item)
    c_bytes, c_counts, py_bytes, py_counts = both(item)
    assert c_bytes == py_bytes and c_counts == py_counts and sum(c_counts) == 1


class Level(enum.IntEnum):
    HIGH = 3


def test_keys_written_as_the_same_text_are_written_once_the_last_value_kept_alike():
    # msgspec wrote the key twice ({"1":"a","1":"b"}) and the server kept the last, silently
    inputs = {"clash": {1: "a", 2: "c", "1": "b"}, "str_first": {"1": "x", 1: "y"},
              "float": [{1.5: "f", "1.5": "g"}], "enum": {Level.HIGH: "e", "3": "f"},
              "nested": {"k": ({0: "lost", "0": {7: "a", "7": "b"}},)},
              "dropped_is_not_looked_into": {1: {2: "x", "2": "y"}, "1": "z"},
              "no_clash": {1: "a", "2": "b"}, "str_keys": {"1": "a"}}
    c_bytes, c_counts, py_bytes, py_counts = both(_start(inputs))
    assert c_bytes == py_bytes
    assert c_counts == py_counts == (1, 0, 1 + 1 + 1 + 1 + 2 + 1)  # the NaN: attributes'
    assert b'"clash":{"1":"b","2":"c"}' in c_bytes  # the first one's place, the last value
    assert msgspec.json.decode(c_bytes)["inputs"] == {
        "clash": {"1": "b", "2": "c"}, "str_first": {"1": "y"}, "float": [{"1.5": "g"}],
        "enum": {"3": "f"}, "nested": {"k": [{"0": {"7": "b"}}]},
        "dropped_is_not_looked_into": {"1": "z"}, "no_clash": {"1": "a", "2": "b"},
        "str_keys": {"1": "a"}}


def test_bool_and_float_keys_are_written_as_weave_writes_them_and_collide_alike():
    # weave 0.54.0's own client stores {True: 1, "true": 2} as {"true": 2} and a float key
    # as its str() (pydantic's JSON); msgspec wrote "True" (two keys) and "1e20", "1e-5"
    inputs = {"bool": {True: 1, "true": 2, False: 3}, "none": {None: 1, "null": 2},
              "float": {1e20: "a", 1e-05: "b", 1.5: "c", math.nan: "n", -math.inf: "i"},
              "float_clash": [{1e16: "x", "1e+16": "y"}], "real": {Real(2.5): "r"}}
    item = _start(inputs)
    item.attributes = {}
    c_bytes, c_counts, py_bytes, py_counts = both(item)
    assert c_bytes == py_bytes
    assert c_counts == py_counts == (0, 0, 2)
    assert msgspec.json.decode(c_bytes)["inputs"] == {
        "bool": {"true": 2, "false": 3}, "none": {"None": 1, "null": 2},
        "float": {"1e+20": "a", "1e-05": "b", "1.5": "c", "nan": "n", "-inf": "i"},
        "float_clash": [{"1e+16": "y"}], "real": {"2.5": "r"}}
    assert _codec.strict_encoder.encode({True: 1}) == b'{"true":1}'  # was EncodeError


class Tagged(dict):
    """A dict subclass: written as a dict, by msgspec."""


def test_a_dict_subclass_is_written_once_per_key_text_as_a_dict_is():
    # msgspec wrote OrderedDict([(1, "a"), ("1", "b")]) as {"1":"a","1":"b"}: weave 0.54.0
    # stores {"1": "b"}, as it does for a dict
    inputs = {"ordered": collections.OrderedDict([(1, "a"), ("1", "b")]),
              "counter": [collections.Counter({True: 2, "true": 3})],
              "nested": Tagged(k=Tagged({2: "x", "2": 1.5e20})),
              "str_keys": collections.defaultdict(int, {"a": 1}), "empty": Tagged()}
    item = _start(inputs)
    item.attributes = {}
    c_bytes, c_counts, py_bytes, py_counts = both(item)
    assert c_bytes == py_bytes
    assert c_counts == py_counts == (0, 0, 3)
    assert msgspec.json.decode(c_bytes)["inputs"] == {
        "ordered": {"1": "b"}, "counter": [{"true": 3}], "nested": {"k": {"2": 1.5e20}},
        "str_keys": {"a": 1}, "empty": {}}


class Color(enum.Enum):
    RED = 1
    PAIR = (1, "two")
    LONG = "x" * 2000


class Perm(enum.Flag):
    R = 4
    W = 2


class Mode(str, enum.Enum):
    FAST = "fast"


def test_plain_enum_members_are_written_as_their_repr_as_weave_does():
    # weave 0.54.0 stores a plain Enum or Flag member as its repr (to_json's stringify, cut
    # at 1000 characters) and an int or str one as its value; an enum key as its value
    inputs = {"plain": [Color.RED, Color.PAIR, Perm.R | Perm.W], "long": Color.LONG,
              "as_value": [Level.HIGH, Mode.FAST], "key": {Color.RED: Color.RED},
              "int_keys": {1: (Color.RED,)}, "subclass": Tagged(a=[Color.RED]),
              "dataclass": Holder(Color.RED)}
    item = _start(inputs)
    item.attributes = {}
    c_bytes, c_counts, py_bytes, py_counts = both(item)
    assert c_bytes == py_bytes
    assert c_counts == py_counts == (0, 0, 0)
    assert msgspec.json.decode(c_bytes)["inputs"] == {
        "plain": ["<Color.RED: 1>", "<Color.PAIR: (1, 'two')>", "<Perm.R|W: 6>"],
        "long": repr(Color.LONG)[:997] + "...", "as_value": [3, "fast"],
        "key": {"1": "<Color.RED: 1>"}, "int_keys": {"1": ["<Color.RED: 1>"]},
        "subclass": {"a": ["<Color.RED: 1>"]}, "dataclass": {"value": 1}}  # msgspec's whole: its rules, as the docs say


class Kind(int):
    """An int subclass (an IntEnum is one): written as an int, nothing to count."""


def test_the_quick_look_passes_a_call_with_nothing_to_count():
    # everything an eval call usually holds, and values msgspec writes as they are: the
    # exact count (a second walk) runs only when there is something to count
    inputs = {"messages": [{"role": "user", "content": "hi", "n": 3, "p": 0.5, "done": True}],
              "when": dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc), "none": None,
              "big": 1e308, "kind": Kind(2), "tuple": ("a", 1, -0.0), "int_keys": {1: "x"},
              "held": Holder(1)}
    end = EndedCallSchemaForInsert(project_id="e/p", id="0190a0f0-0000-7000-8000-000000000001",
                                   ended_at=dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc),
                                   output=inputs, summary={"usage": {"tokens": 5}})
    start = _start(inputs)
    start.attributes = {"weave": {"v": "1"}}
    for item in (start, end, inputs):
        assert not PY_ENCODER._may_be_lossy(item)


def test_an_end_with_nothing_to_count_counts_nothing():
    end = EndedCallSchemaForInsert(project_id="e/p", id="0190a0f0-0000-7000-8000-000000000001",
                                   ended_at=dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc),
                                   output={"a": [1, "null", None]}, summary={})
    c_bytes, c_counts, py_bytes, py_counts = both(end)
    assert c_bytes == py_bytes and c_counts == py_counts == (0, 0, 0)


def _nest(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


OUTERMOST = {  # a value of so many levels whose outermost container is of this kind
    "list": _nest,
    "tuple": lambda levels: (_nest(levels - 1),),
    "dict": lambda levels: {"k": _nest(levels - 1)},
    "int_keys": lambda levels: {1: _nest(levels - 1)},  # msgspec's whole
    "dataclass": lambda levels: Holder(_nest(levels - 1)),  # msgspec's, as an object
}


@pytest.mark.parametrize("outermost", list(OUTERMOST))
def test_a_value_past_max_value_depth_is_refused_alike_and_one_at_it_written(outermost):
    # engine serve refuses a body nested past 256 levels, weave's server past 200: an item
    # nested 101 to ~990 levels encoded, and was refused there for good
    assert native.MAX_VALUE_DEPTH == MAX_VALUE_DEPTH
    make = OUTERMOST[outermost]
    at_limit = _start({"v": make(MAX_VALUE_DEPTH - 1)})  # inputs is the first level
    c_bytes, _, py_bytes, _ = both(at_limit)
    assert c_bytes == py_bytes == msgspec.json.encode(at_limit)
    c_error, _, py_error, _ = both(_start({"v": make(MAX_VALUE_DEPTH)}))
    refused = f"ValueError: a value is nested deeper than {MAX_VALUE_DEPTH} levels"
    assert c_error == py_error == refused


def test_a_raws_own_levels_are_its_writers_and_not_counted():
    # engine relay and engine ingest write what they received as Raw values, checked
    # against the server's limit (256 levels in a body) themselves
    item = _start({"v": msgspec.Raw(msgspec.json.encode(_nest(200)))})
    c_bytes, _, py_bytes, _ = both(item)
    assert c_bytes == py_bytes == msgspec.json.encode(item)


leaves = (st.floats(allow_nan=True, allow_infinity=True) | st.none() | st.integers()
          | st.text(max_size=5) | st.binary(max_size=4).map(bytes)
          | st.binary(max_size=4).map(bytearray)
          | st.sampled_from([Decimal("NaN"), Decimal("Infinity"), Decimal("2.5"), Real("inf"),
                             Holder(math.nan), Color.RED, Level.HIGH]))
values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4)
                      | st.lists(inner, max_size=3).map(tuple)
                      | st.dictionaries(st.text(max_size=3), inner, max_size=4)
                      | st.dictionaries(st.text(max_size=3), inner, max_size=2).map(Tagged)
                      | st.dictionaries(st.integers(0, 9), inner, max_size=2)
                      # keys that collide once written as text: "1" and 1, "true" and True
                      | st.dictionaries(st.integers(0, 2) | st.booleans() | st.sampled_from(
                          [1.5, 1e16, "0", "1", "2", "true", "1.5", "1e+16"]), inner,
                          max_size=4).map(lambda d: Tagged(d) if len(d) == 3 else d),
                      max_leaves=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(max_size=4), values, max_size=4))
def test_any_value_is_written_and_counted_alike(inputs):
    c_bytes, c_counts, py_bytes, py_counts = both(_start(inputs))
    assert c_bytes == py_bytes
    assert c_counts == py_counts
