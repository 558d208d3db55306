"""The raw ingest models: they mirror the wire models and refuse exactly what those refused."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.server._body import ApiError, decode_json
from engine.server._ingest_models import (
    RawBatch,
    RawCallEndReq,
    RawCallsCompleteReq,
    RawCallStartReq,
    RawCompletedCall,
    RawEndBatchItem,
    RawEndedCall,
    RawStartBatchItem,
    RawStartedCall,
    decode_ingest,
)
from engine.server._rows import complete_row, row_to_call
from engine.wire.calls import (
    Batch,
    CallEndReq,
    CallStartReq,
    CallsUpsertCompleteReq,
    CompletedCallSchemaForInsert,
    EndBatchItem,
    EndedCallSchemaForInsert,
    StartBatchItem,
    StartedCallSchemaForInsert,
)
from tests.server.harness import complete, end, start, upsert_batch

JSON_FIELDS = frozenset({"attributes", "inputs", "otel_dump", "output", "summary"})
CALL_PAIRS = [
    (StartedCallSchemaForInsert, RawStartedCall),
    (EndedCallSchemaForInsert, RawEndedCall),
    (CompletedCallSchemaForInsert, RawCompletedCall),
]
BODY_PAIRS = [
    (CallStartReq, RawCallStartReq),
    (CallEndReq, RawCallEndReq),
    (StartBatchItem, RawStartBatchItem),
    (EndBatchItem, RawEndBatchItem),
    (Batch, RawBatch),
    (CallsUpsertCompleteReq, RawCallsCompleteReq),
]


def _fields(model: type) -> dict[str, msgspec.inspect.Field]:
    return {f.name: f for f in msgspec.inspect.type_info(model).fields}


@pytest.mark.parametrize(("wire", "raw"), CALL_PAIRS, ids=lambda m: m.__name__)
def test_raw_call_models_mirror_the_wire_models_field_for_field(wire, raw):
    assert raw.__struct_fields__ == wire.__struct_fields__
    assert (
        raw.__struct_config__.forbid_unknown_fields == wire.__struct_config__.forbid_unknown_fields
    )
    wire_fields, raw_fields = _fields(wire), _fields(raw)
    for name, w in wire_fields.items():
        r = raw_fields[name]
        assert (r.required, r.encode_name) == (w.required, w.encode_name), name
        if name in JSON_FIELDS:
            continue
        assert (r.type, r.default) == (w.type, w.default), name


@pytest.mark.parametrize(("wire", "raw"), BODY_PAIRS, ids=lambda m: m.__name__)
def test_raw_bodies_are_as_strict_as_the_wire_bodies(wire, raw):
    for attr in ("forbid_unknown_fields", "tag_field", "tag"):
        assert getattr(raw.__struct_config__, attr) == getattr(wire.__struct_config__, attr)
    assert raw.__struct_fields__ == wire.__struct_fields__


def _both(body: Any, wire: type, raw: type) -> tuple[Any, Any]:
    """What the typed decode and the raw decode make of ``body``: a value or (status, reason)."""
    data = body if isinstance(body, bytes) else msgspec.json.encode(body)
    outcomes = []
    for decode, model in ((decode_json, wire), (decode_ingest, raw)):
        try:
            outcomes.append(decode(data, model))
        except ApiError as exc:
            outcomes.append((exc.status, exc.reason))
    return outcomes[0], outcomes[1]


def _refusal(body: Any, wire: type, raw: type) -> tuple[int, str]:
    typed, lean = _both(body, wire, raw)
    assert lean == typed, "the raw decode must refuse as the typed decode did"
    return lean


@pytest.mark.parametrize(
    ("value", "kind"),
    [("text", "str"), (7, "int"), (-0.5, "float"), (1e300, "float"), ([1], "array"),
     (True, "bool"), (None, "null")],
)  # fmt: skip
def test_inputs_not_an_object_is_a_422_naming_the_field_and_its_kind(value, kind):
    calls = [complete(f"c{i}") for i in range(5)]
    calls[3]["inputs"] = value
    status, reason = _refusal({"batch": calls}, CallsUpsertCompleteReq, RawCallsCompleteReq)
    assert status == 422
    assert (
        reason == f"invalid request body: Expected `object`, got `{kind}` - at `$.batch[3].inputs`"
    )


def test_every_object_field_of_every_shape_is_checked_by_name():
    bad_start = start("s", attributes=[], otel_dump="x")
    bad_end = end("e", summary="x")
    cases = [
        ({"start": bad_start}, CallStartReq, RawCallStartReq, "$.start.attributes"),
        ({"start": start("s", otel_dump=1)}, CallStartReq, RawCallStartReq, "$.start.otel_dump"),
        ({"end": bad_end}, CallEndReq, RawCallEndReq, "$.end.summary"),
        (upsert_batch(("start", start("a")), ("end", bad_end)), Batch, RawBatch,
         "$.batch[1].req.end.summary"),
        (upsert_batch(("start", bad_start)), Batch, RawBatch, "$.batch[0].req.start.attributes"),
        ({"batch": [{**complete("c"), "summary": []}]}, CallsUpsertCompleteReq, RawCallsCompleteReq,
         "$.batch[0].summary"),
    ]  # fmt: skip
    for body, wire, raw, path in cases:
        status, reason = _refusal(body, wire, raw)
        assert status == 422 and reason.endswith(f"- at `{path}`"), reason
    assert "Expected `object | null`, got `int`" in _refusal(*cases[1][:3])[1]


@pytest.mark.parametrize(
    "call",
    # otel_dump null, an object, left out; output of every kind and left out
    [complete("c", otel_dump=None), complete("c", otel_dump={"span": {"k": 1}}),
     {**complete("c"), "output": [1, "two", None]}, {**complete("c"), "output": "s"},
     {k: v for k, v in complete("c").items() if k != "output"}, complete("c")],
)  # fmt: skip
def test_accepted_calls_make_the_rows_the_typed_decode_made(call):
    body = msgspec.json.encode({"batch": [call]})
    typed = decode_json(body, CallsUpsertCompleteReq).batch[0]
    lean = decode_ingest(body, RawCallsCompleteReq).batch[0]
    assert complete_row(lean) == complete_row(typed)


@pytest.mark.parametrize(
    "inputs",
    [b'{"a": 01}', b'{"a": 1,}', b'{"a": NaN}', b'{"a": "\\x"}', b'{"a" 1}', b'{"a": "\x01"}'],
)
def test_malformed_json_inside_inputs_is_a_400_as_before(inputs):
    body = msgspec.json.encode({"batch": [complete("c")]})
    body = body.replace(b'"inputs":{"question":"q-c"}', b'"inputs":' + inputs)
    typed, lean = _both(body, CallsUpsertCompleteReq, RawCallsCompleteReq)
    # msgspec words a syntax error a little differently when it skips a value than when it
    # builds one: the status and the kind of reason are what clients act on
    assert typed[0] == lean[0] == 400 and lean[1].startswith("malformed JSON: "), lean


def test_invalid_utf8_inside_inputs_is_a_400():
    body = msgspec.json.encode({"batch": [complete("c")]}).replace(b"q-c", b"q-\xff")
    typed, lean = _both(body, CallsUpsertCompleteReq, RawCallsCompleteReq)
    # msgspec >= 0.23 finds it itself ("Invalid UTF-8 encoded string"); older ones left it
    # to the str decode ("malformed JSON: invalid UTF-8: ...")
    assert typed[0] == lean[0] == 400
    assert "invalid utf-8" in typed[1].lower() and "invalid utf-8" in lean[1].lower(), (typed, lean)


_TEXT = st.characters(blacklist_categories=("Cs",))  # lone surrogates are not UTF-8
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(_TEXT),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(_TEXT, max_size=8), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


# mostly objects, so that many examples pass and are compared as stored rows
_fields_values = (
    st.dictionaries(st.text(_TEXT, max_size=8), _json_values, max_size=4) | _json_values
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(inputs=_fields_values, output=_json_values, summary=_fields_values,
       attributes=_fields_values)  # fmt: skip
def test_raw_decode_accepts_refuses_and_stores_as_the_typed_decode(inputs, output, summary,
                                                                   attributes):  # fmt: skip
    call = {**complete("c"), "inputs": inputs, "output": output, "summary": summary,
            "attributes": attributes}  # fmt: skip
    typed, lean = _both({"batch": [call]}, CallsUpsertCompleteReq, RawCallsCompleteReq)
    if isinstance(typed, tuple):
        assert lean == typed
        return
    typed_call = row_to_call(complete_row(typed.batch[0]))
    lean_call = row_to_call(complete_row(lean.batch[0]))
    assert {k: _value(v) for k, v in lean_call.items()} == {
        k: _value(v) for k, v in typed_call.items()
    }


def _value(v: Any) -> Any:
    return msgspec.json.decode(v) if isinstance(v, msgspec.Raw) else v


def test_legal_values_the_quick_look_leaves_to_the_full_checks_are_accepted():
    # another offset than UTC, step numbers: ok() is False, the full checks let them pass
    call = {**complete("c"), "started_at": "2026-12-04T23:00:00+02:00", "wb_run_step": 7,
            "wb_run_step_end": 8, "otel_dump": None}
    req = decode_ingest(msgspec.json.encode({"batch": [call, complete("d")]}), RawCallsCompleteReq)
    assert [c.ok() for c in req.batch] == [False, True]
    assert req.batch[0].wb_run_step == 7 and req.batch[0].started_at.utcoffset().seconds == 7200
    body = upsert_batch(("start", start("s", started_at="2026-12-04T23:00:00-05:00")),
                        ("end", end("s", wb_run_step_end=3)))
    req = decode_ingest(msgspec.json.encode(body), RawBatch)
    assert [req.batch[0].req.start.ok(), req.batch[1].req.end.ok()] == [False, False]
