"""The C encoder (engine/native/_json.c) writes msgspec's bytes, value for value.

The producer encodes every traced item with it when the accelerator is built, so what
reaches the ring, the sender's splicing and the server must not change by a byte: each
test compares it with msgspec's own encoder on the same value, hooks and errors included.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import math
import uuid

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine.producer._tracer  # noqa: F401  (registers the wire insert types' plans)
from engine.native import _accel
from engine.wire import _codec
from engine.wire.calls import (
    CompletedCallSchemaForInsert,
    EndedCallSchemaForInsert,
    StartedCallSchemaForInsert,
    end_splice_offset,
)

native = _accel.native
pytestmark = pytest.mark.skipif(native is None, reason="engine.native._native is not built here")

ENCODER = _codec.producer_encoder  # its hook counts what it stringifies


def native_encode(value, encoder=ENCODER):
    return native.encode(encoder.encode, value)


class Color(str, enum.Enum):  # msgspec's value; a plain Enum is weave's repr (test_lossy.py)
    RED = "red"


class Point(msgspec.Struct):  # a Struct with no plan: msgspec encodes it inside our output
    x: int
    y: float = 0.5


class Opaque:
    def __str__(self) -> str:
        return "opaque-\u00e9\"quoted\""


def same_as_msgspec(value, encoder=ENCODER) -> None:
    before = _codec.Stringified.count
    expected = encoder.encode(value)
    hooked = _codec.Stringified.count - before
    got = native_encode(value, encoder)
    assert got == expected
    assert _codec.Stringified.count - before == 2 * hooked  # the hook ran once per encode


text = st.text(alphabet=st.characters(codec="utf-8"), max_size=80) | st.sampled_from(
    ["", '"', "\\", "\x00\x1f\x7f", "a" * 15 + '"', "b" * 16 + "\\" + "c" * 17,
     "x" * 33 + "\n", "\u2028\u2029", "\U0001d11e snowman \u2603", "tab\there"])
floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [0.0, -0.0, 0.7, 0.85, 1e-4, 9.99e-5, 1e15, 1e16, 123456789.125, 0.1 + 0.2, -2.5, 1.0])
ints = st.integers(min_value=-(2**70), max_value=2**70) | st.sampled_from(
    [0, -1, 2**63 - 1, -(2**63), 2**63, 2**64 - 1, 2**64])
datetimes = st.datetimes(timezones=st.sampled_from(
    [None, dt.timezone.utc, dt.timezone(dt.timedelta(hours=5, minutes=30))]))
scalars = (text | floats | ints | st.booleans() | st.none() | datetimes
           | st.sampled_from([Color.RED, uuid.UUID(int=7), decimal.Decimal("1.25"),
                              b"\x00bytes", Point(3), Opaque()]))
values = st.recursive(
    scalars,
    lambda inner: (st.lists(inner, max_size=6) | st.lists(inner, max_size=4).map(tuple)
                   | st.dictionaries(text, inner, max_size=6)
                   | st.dictionaries(st.integers(-5, 5), inner, max_size=3)),
    max_leaves=40,
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_any_value_encodes_as_msgspec_does(value):
    same_as_msgspec(value)


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False)
       | st.builds(lambda m, k: m / 10**k, st.integers(-(10**17), 10**17), st.integers(0, 12)))
def test_floats_take_msgspec_shortest_form(x):
    assert native_encode(x) == ENCODER.encode(x)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_strings_at_every_length_and_escape_position(s):
    assert native_encode(s) == ENCODER.encode(s)
    assert native_encode({s: s}) == ENCODER.encode({s: s})


def test_short_strings_at_many_addresses_and_near_page_ends():
    # The last 1..15 bytes of a string are checked as one 16-byte block unless that block
    # would cross into the next page: 40,000 live strings put some tails at every offset
    # of a page, and each carries an escape at a different position or none.
    strings = []
    for i in range(40_000):
        n = 1 + i % 31
        chars = ["k"] * n
        if i % 3:
            chars[(i // 31) % n] = '"\\\n\x01'[i % 4]
        strings.append("".join(chars))
    assert native_encode(strings) == ENCODER.encode(strings)
    assert native_encode({s: i for i, s in enumerate(strings)}) == ENCODER.encode(
        {s: i for i, s in enumerate(strings)})


@pytest.mark.parametrize("size", [15, 16, 17, 40])
def test_dicts_around_and_past_the_snapshot_size(size):
    value = {f"key-{k}": [k, {"inner": f"v{k}"}, Opaque()] for k in range(size)}
    same_as_msgspec(value)


class Mutator:
    """An object whose enc_hook changes the dict it sits in, as badly behaved hooks might."""

    def __init__(self, target: dict, change) -> None:
        self.target, self.change = target, change

    def __str__(self) -> str:
        self.change(self.target)
        return "mutated"


@pytest.mark.parametrize("change", [
    lambda d: d.__setitem__("c", "replaced"),  # a later value replaced
    lambda d: d.pop("c"),                      # a later entry deleted
    lambda d: d.__setitem__("b", "again"),     # the value being encoded replaced
], ids=["replace-later", "delete-later", "replace-current"])
def test_a_hook_that_changes_the_dict_being_encoded_sees_what_msgspec_sees(change):
    def build():
        d = {"a": 1, "b": None, "c": "original", "d": [1, 2]}
        d["b"] = Mutator(d, change)
        return d

    assert native_encode(build()) == ENCODER.encode(build())


@settings(max_examples=200, deadline=None)
@given(inputs=st.dictionaries(text, values, max_size=4), output=values,
       parent=st.none() | st.just("01930000-0000-7000-8000-000000000001"),
       display=st.none() | text, stamp=datetimes)
def test_wire_insert_structs_encode_as_msgspec_does(inputs, output, parent, display, stamp):
    start = StartedCallSchemaForInsert(
        project_id="e/p", id="01930000-0000-7000-8000-000000000002", op_name="op",
        display_name=display, trace_id="t", parent_id=parent, started_at=stamp,
        attributes={"k": 1}, inputs=inputs)
    end = EndedCallSchemaForInsert(project_id="e/p", id="i", ended_at=stamp, output=output,
                                   summary={"usage": {}}, exception=display)
    complete = CompletedCallSchemaForInsert(
        project_id="e/p", id="i", trace_id="t", op_name="op", started_at=stamp,
        attributes={}, inputs=inputs, ended_at=stamp, output=output, summary={})
    for item in (start, end, complete):
        same_as_msgspec(item)


def test_the_strict_encoder_raises_what_msgspec_raises():
    strict = _codec.strict_encoder
    with pytest.raises(Exception) as ours:
        native_encode({"a": [1, Opaque()]}, strict)
    with pytest.raises(Exception) as theirs:
        strict.encode({"a": [1, Opaque()]})
    assert type(ours.value) is type(theirs.value)
    assert str(ours.value) == str(theirs.value)


def test_unencodable_strings_and_cycles_fail_as_under_msgspec():
    with pytest.raises(UnicodeEncodeError):
        native_encode({"bad": "\ud800"})
    loop: list = []
    loop.append(loop)
    with pytest.raises(RecursionError):
        native_encode(loop)


def test_a_dict_with_a_non_str_key_goes_to_msgspec_whole_and_hooks_run_once():
    value = {"a": Opaque(), 3: Opaque()}  # the str key comes first: nothing is encoded twice
    same_as_msgspec(value)


def test_unset_fields_and_omitted_defaults_are_left_out():
    end = EndedCallSchemaForInsert(project_id="e/p", id="i", ended_at=dt.datetime(2026, 1, 1),
                                   summary={}, output=msgspec.UNSET)
    assert native_encode(end) == ENCODER.encode(end)
    assert b"output" not in native_encode(end)


def test_the_splice_offset_is_where_ended_at_begins(tmp_path):
    from engine import ring

    ringset = ring.RingSet.create(1 << 20, 2)
    try:
        writer = ringset.writer()
        end = EndedCallSchemaForInsert(
            project_id="e/p", id="01930000-0000-7000-8000-000000000002", trace_id=None,
            started_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
            ended_at=dt.datetime(2026, 1, 1, 0, 0, 1, tzinfo=dt.timezone.utc),
            output={"text": '"ended_at": inside a value'}, summary={})
        code = writer.put(ENCODER, end, ring.KIND_END, 0, end.id, None, b"e/p", 1 << 20, True)
        assert code in (ring.WRITTEN, ring.WRITTEN_RING)
        (record,) = ringset.reader().read()
        assert bytes(record.payload) == ENCODER.encode(end)
        assert record.aux == end_splice_offset(ENCODER.encode(end))
        writer.detach()
    finally:
        ringset.close()
        ringset.unlink()


def test_large_items_and_nan_round_trip():
    big = {"text": "z" * (3 << 20), "nan": math.nan, "inf": -math.inf}
    assert native_encode(big) == ENCODER.encode(big)


@settings(max_examples=500, deadline=None)
@given(st.integers(min_value=-62135596800, max_value=253402300799), st.integers(0, 999_999))
def test_utc_datetimes_are_pythons(secs, us):
    expected = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(
        seconds=secs, microseconds=us)
    got = native.utc_datetime(secs, us)
    assert got == expected and got.tzinfo is dt.timezone.utc


def test_utcnow_is_now_in_utc():
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(microseconds=1)
    now = _codec.utcnow()
    after = dt.datetime.now(dt.timezone.utc) + dt.timedelta(microseconds=1)
    assert before <= now <= after and now.tzinfo is dt.timezone.utc


def test_struct_plans_only_for_configs_the_c_encoder_reproduces():
    class Tagged(msgspec.Struct, tag=True):
        a: int

    class ArrayLike(msgspec.Struct, array_like=True):
        a: int

    class Factory(msgspec.Struct, omit_defaults=True):
        a: list = msgspec.field(default_factory=list)

    class Plain(msgspec.Struct, omit_defaults=True, rename="camel"):
        first_field: int
        maybe_text: str | None = None
        count: int = 0
        nested: Point | None = None

    for cls in (Tagged, ArrayLike, Factory):
        assert _codec.native_struct_plan(cls) is False
    assert _codec.native_struct_plan(Plain) is True
    for value in (Plain(1), Plain(2, "t", 0), Plain(3, None, 7, Point(1, 2.5)),
                  Plain(4, msgspec.UNSET), [Plain(5), {"k": Plain(6, "x")}]):
        same_as_msgspec(value)


def test_raw_ingest_models_encode_as_msgspec_does_their_raw_bytes_copied():
    from engine.server._ingest_models import (
        RAW_NULL,
        RawCompletedCall,
        RawEndedCall,
        RawStartedCall,
    )

    t = dt.datetime(2026, 12, 4, 21, 0, 0, 123456, tzinfo=dt.timezone.utc)
    raw = msgspec.Raw(b'{"q":"\\u00e9 \\"x\\"","n":[1,2.5e300,null],"d":{}}')
    common = {"project_id": "e/p", "id": "c1", "trace_id": "t1"}
    items = [
        RawStartedCall(**common, op_name="op", started_at=t, attributes=raw, inputs=raw),
        RawEndedCall(**common, ended_at=t, summary=raw),  # output left at RAW_NULL: omitted
        RawEndedCall(**common, ended_at=t, summary=raw, output=msgspec.Raw(b"null")),
        RawEndedCall(**common, ended_at=t.replace(tzinfo=None), summary=raw,
                     output=msgspec.Raw(b"")),  # empty: msgspec writes nothing, nor do we
        RawCompletedCall(**common, op_name="op", started_at=t, ended_at=t, attributes=raw,
                         inputs=raw, summary=raw, output=raw, otel_dump=RAW_NULL,
                         wb_run_step=3),
        RawCompletedCall(**common, op_name="op", started_at=t,
                         ended_at=t.astimezone(dt.timezone(dt.timedelta(hours=2))),
                         attributes=raw, inputs=raw, summary=raw),
    ]
    for item in items:
        same_as_msgspec(item)
    called = []

    def fallback(value):
        called.append(value)
        return ENCODER.encode(value)

    for item in items[:5]:  # encoded in C whole: nothing goes to msgspec (only +02:00 would)
        assert native.encode(fallback, item) == ENCODER.encode(item)
    assert called == []
    decoded = msgspec.json.decode(msgspec.json.encode(items[4]), type=RawCompletedCall)
    same_as_msgspec(decoded)  # Raw slices of a decoded body
