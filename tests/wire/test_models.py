"""Round trips and edge cases of the wire models of objects, tables, refs, files, feedback,
costs and the rest of the surface."""

from __future__ import annotations

import datetime as dt
import inspect
import math

import msgspec
import pytest

from engine.wire import (
    costs,
    decode,
    encode,
    feedback,
    files,
    misc,
    objects,
    refs,
    tables,
)
from tests.wire.wire_samples import PROJECT, REQUESTS, RESPONSES, T0

MODULES = (objects, tables, refs, files, feedback, costs, misc)


def _structs(module):
    return {obj for _, obj in inspect.getmembers(module, inspect.isclass)
            if issubclass(obj, msgspec.Struct) and obj.__module__ == module.__name__}


def _name(value):
    return type(value).__name__


@pytest.mark.parametrize("value", REQUESTS + RESPONSES, ids=_name)
def test_round_trip_is_lossless(value):
    decoded = decode(encode(value), type(value))
    assert type(decoded) is type(value)
    # structural: TableAppendSpec & co. come back as their base TableUpdateSpec
    assert msgspec.to_builtins(decoded) == msgspec.to_builtins(value)


def _struct_types_in(value, found):
    if isinstance(value, msgspec.Struct):
        found.add(type(value))
        for field in value.__struct_fields__:
            _struct_types_in(getattr(value, field), found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _struct_types_in(item, found)
    elif isinstance(value, dict):
        for item in value.values():
            _struct_types_in(item, found)
    return found


def test_every_model_is_exercised_by_a_round_trip_sample():
    sampled = _struct_types_in(REQUESTS + RESPONSES, set())
    # the base of TableAppendSpec & co. is what decoding yields, checked by the round trip
    declared = {s for m in MODULES for s in _structs(m)} - {tables.TableUpdateSpec}
    assert not {s.__name__ for s in declared - sampled}


@pytest.mark.parametrize("req", REQUESTS, ids=_name)
def test_unknown_top_level_request_field_is_rejected_naming_it(req):
    body = msgspec.json.decode(encode(req))
    body["surprise"] = 1
    with pytest.raises(msgspec.ValidationError, match="surprise"):
        decode(msgspec.json.encode(body), type(req))


@pytest.mark.parametrize("res", RESPONSES, ids=_name)
def test_unknown_response_fields_are_ignored(res):
    body = msgspec.json.decode(encode(res))
    body["added_by_a_newer_server"] = {"x": [1, 2]}
    assert decode(msgspec.json.encode(body), type(res)) == res


def test_unknown_nested_fields_are_ignored():
    body = b'{"obj": {"project_id": "a/b", "object_id": "o", "val": 1, "new_field": 2}}'
    assert decode(body, objects.ObjCreateReq).obj.val == 1


@pytest.mark.parametrize("typ, body, field", [
    (objects.ObjReadReq, b'{"project_id": "a/b", "object_id": "o"}', "digest"),
    (tables.TableUpdateReq, b'{"project_id": "a/b", "updates": []}', "base_digest"),
    (feedback.FeedbackCreateReq,
     b'{"project_id": "a/b", "weave_ref": "r", "payload": {}}', "feedback_type"),
    (costs.CostCreateReq, b'{"project_id": "a/b", "costs": {"m": {"prompt_token_cost": 1}}}',
     "completion_token_cost"),
    (misc.ThreadSchema, b'{"thread_id": "t", "turn_count": 1, "start_time": '
     b'"2026-01-01T00:00:00Z"}', "last_updated"),
])
def test_missing_required_field_error_names_the_field(typ, body, field):
    with pytest.raises(msgspec.ValidationError, match=f"`{field}`"):
        decode(body, typ)


def test_datetimes_encode_as_utc_with_z_and_decode_from_offsets():
    res = misc.ThreadSchema(thread_id="t", turn_count=1, start_time=T0, last_updated=T0)
    assert b'"start_time":"2026-03-01T12:30:45.123456Z"' in encode(res)
    body = encode(res).replace(b"Z", b"+00:00")
    assert decode(body, misc.ThreadSchema).start_time == T0
    east = T0.astimezone(dt.timezone(dt.timedelta(hours=5, minutes=30)))
    assert decode(encode(misc.ThreadSchema(
        thread_id="t", turn_count=1, start_time=east, last_updated=T0)),
        misc.ThreadSchema).start_time == T0


def test_nan_and_infinity_encode_as_null():
    req = tables.TableCreateReq(table=tables.TableSchemaForInsert(
        project_id=PROJECT, rows=[{"a": math.nan, "b": math.inf, "c": -math.inf}]))
    assert decode(encode(req), tables.TableCreateReq).table.rows == [
        {"a": None, "b": None, "c": None}]


def test_unicode_including_astral_round_trips_unescaped():
    text = "naïve Ωmega 中文 🧪𝔘𐍈 \u200d\x00\n\"\\"
    req = refs.RefsReadBatchReq(refs=[text])
    body = encode(req)
    assert "🧪𝔘𐍈".encode() in body  # UTF-8, not \\u escapes
    assert decode(body, refs.RefsReadBatchReq).refs == [text]
    assert decode(b'{"refs": ["\\ud83e\\uddea"]}', refs.RefsReadBatchReq).refs == ["🧪"]


def test_lone_surrogates_are_refused_not_altered():
    """A str holding a lone surrogate is not Unicode text and has no UTF-8 form: encoding
    refuses it (UnicodeEncodeError, a ValueError) rather than silently changing user data;
    a received JSON escape of a lone surrogate is rejected as malformed."""
    with pytest.raises(UnicodeEncodeError):
        encode(refs.RefsReadBatchReq(refs=["bad \ud800 text"]))
    with pytest.raises(msgspec.DecodeError):
        decode(b'{"refs": ["bad \\ud800 text"]}', refs.RefsReadBatchReq)


def test_deeply_nested_values_round_trip():
    depth = 200
    val: object = "leaf"
    for i in range(depth):
        val = {"k": val} if i % 2 else [val]
    req = objects.ObjCreateReq(obj=objects.ObjSchemaForInsert(
        project_id=PROJECT, object_id="deep", val=val))
    assert decode(encode(req), objects.ObjCreateReq) == req


def test_huge_strings_round_trip():
    big = "x" * (10 * 1024 * 1024 - 3) + "é"
    res = tables.TableRowSchema(digest="d", val={"blob": big})
    body = encode(res)
    assert len(body) > 10 * 1024 * 1024
    assert decode(body, tables.TableRowSchema).val["blob"] == big


@pytest.mark.parametrize("update", [b"{}", b'{"pop": {"index": 1}, "append": {"row": {}}}'])
def test_table_update_needs_exactly_one_operation(update):
    body = b'{"project_id": "a/b", "base_digest": "d", "updates": [' + update + b"]}"
    with pytest.raises(msgspec.ValidationError, match="exactly one of append, pop, insert"):
        decode(body, tables.TableUpdateReq)


def test_table_update_operations_encode_as_single_key_objects():
    body = msgspec.json.decode(encode(REQUESTS[9]))
    assert [list(u) for u in body["updates"]] == [["append"], ["pop"], ["insert"]]


def test_defaults_are_omitted_and_server_defaults_mirrored():
    assert msgspec.json.decode(encode(misc.ProjectStatsReq(project_id=PROJECT))) == {
        "project_id": PROJECT}
    assert decode(b'{"project_id": "a/b"}', misc.ProjectStatsReq).include_trace_storage_size
    body = msgspec.json.decode(encode(misc.CompletionsCreateReq(
        project_id=PROJECT, inputs=misc.CompletionsCreateRequestInputs(model="m"),
        track_llm_call=False)))
    assert body == {"project_id": PROJECT, "inputs": {"model": "m"}, "track_llm_call": False}


def test_feedback_batch_gives_every_item_an_id_and_keeps_given_ones():
    given = feedback.FeedbackCreateReq(id="keep-me", project_id=PROJECT, weave_ref="r",
                                       feedback_type="t", payload={})
    fresh = msgspec.structs.replace(given, id=None)
    batch = feedback.feedback_batch([given, fresh, fresh]).batch
    assert batch[0].id == "keep-me"
    assert batch[1].id and batch[2].id and batch[1].id != batch[2].id
    assert fresh.id is None


def test_file_create_multipart_fields():
    req = files.FileCreateReq(project_id=PROJECT, name="a.bin", content=b"\x00",
                              expected_digest="d")
    assert files.multipart_fields(req) == (
        {"project_id": PROJECT, "expected_digest": "d"}, ("a.bin", b"\x00"))
