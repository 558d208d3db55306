"""The op wrappers' sanitiser (engine/producer/_sanitise.py), value by value: what is
replaced, by what, counted how; the direct API's error names the same place."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter

import msgspec

from engine.producer._sanitise import MAX_DEPTH, first_problem, sanitise_item
from engine.wire import _codec
from engine.wire.calls import EndedCallSchemaForInsert, StartedCallSchemaForInsert

UTC = dt.timezone.utc


def _start(**fields) -> StartedCallSchemaForInsert:
    values = dict(project_id="e/p", id="0190a0f0-0000-7000-8000-000000000001", op_name="op",
                  trace_id="0190a0f0-0000-7000-8000-000000000002", attributes={},
                  started_at=dt.datetime(2026, 1, 2, tzinfo=UTC), inputs={})
    values.update(fields)
    return StartedCallSchemaForInsert(**values)


def sanitised(limit: int = 1 << 20, **fields) -> tuple[dict, Counter]:
    clean, counts = sanitise_item(_start(**fields), strict=False, max_payload=limit)
    return msgspec.json.decode(_codec.producer_encoder.encode(clean)), counts


def test_values_that_encode_are_kept_as_they_are():
    inputs = {"a": [1, 2.5, None, True], "b": {"c": "d"}, "t": (1, 2), "s": {3}}
    item, counts = sanitised(inputs=inputs)
    assert item["inputs"] == {"a": [1, 2.5, None, True], "b": {"c": "d"}, "t": [1, 2], "s": [3]}
    assert counts == Counter()


def test_a_cycle_through_a_list_is_cut_where_it_closes():
    loop: list = [1]
    loop.append({"back": loop})
    item, counts = sanitised(inputs={"loop": loop})
    assert item["inputs"]["loop"] == [1, {"back": "<cycle: list contains itself>"}]
    assert counts == Counter(cycle=1)


def test_shared_values_that_are_no_cycle_are_kept():
    shared = {"x": 1}
    item, counts = sanitised(inputs={"a": shared, "b": [shared, shared]})
    assert item["inputs"] == {"a": {"x": 1}, "b": [{"x": 1}, {"x": 1}]} and counts == Counter()


def test_lone_surrogates_in_keys_and_names_become_replacement_characters():
    item, counts = sanitised(op_name="op\udc80", inputs={"k\ud800": "v\udfff"})
    assert item["op_name"] == "op\ufffd" and item["inputs"] == {"k\ufffd": "v\ufffd"}
    assert counts == Counter(bad_string=3)


def test_keys_written_as_the_same_text_keep_the_last_value_at_the_first_place_counted():
    # as the encoders write them (engine/wire/_lossy.py unique_keys); a dropped value's
    # own problems are not looked for, and the direct API's walk finds no problem in them
    loop: list = []
    loop.append(loop)
    inputs = {"d": {1: "a", 2: "c", "1": {"x": loop}, "2": "d", "1.5": 0, 1.5: 1}, "cut": loop}
    item, counts = sanitised(inputs=inputs)
    assert list(item["inputs"]["d"].items()) == [("1", {"x": ["<cycle: list contains itself>"]}),
                                                 ("2", "d"), ("1.5", 1)]
    assert counts == Counter(duplicate_key=3, cycle=2)
    assert first_problem(_start(inputs={"d": {1: "a", "1": "b"}}), strict=False) is None


def test_bool_and_float_keys_are_written_as_weave_writes_them_and_merged_alike():
    # as the encoders write them: JSON's true / false, a float's str() (weave 0.54.0's own)
    loop: list = []
    loop.append(loop)
    inputs = {"d": {True: 1, "true": 2, 1e20: 3, 1e-05: 4}, "cut": loop}
    item, counts = sanitised(inputs=inputs)
    assert item["inputs"]["d"] == {"true": 2, "1e+20": 3, "1e-05": 4}
    assert counts == Counter(duplicate_key=1, cycle=1)


def _nested(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


def test_nesting_deeper_than_the_limit_is_replaced_at_the_limit():
    deep: list = []
    for _ in range(MAX_DEPTH + 50):
        deep = [deep]
    item, counts = sanitised(inputs={"deep": deep})
    level, depth = item["inputs"]["deep"], 1
    while isinstance(level, list):
        level, depth = level[0], depth + 1
    assert level == f"<unencodable: nested deeper than {MAX_DEPTH} levels>" and depth == MAX_DEPTH
    assert counts == Counter(unencodable=1)


@dataclasses.dataclass
class Holder:
    value: object


def test_what_msgspec_writes_past_the_levels_left_is_replaced_at_its_level():
    # a dataclass: msgspec's bytes, nested past MAX_DEPTH where it sits; the encoders
    # refuse it (engine serve would). A Raw is its writer's JSON: kept as it is
    raw = msgspec.Raw(msgspec.json.encode(_nested(MAX_DEPTH)))
    inputs = {"held": [Holder(_nested(MAX_DEPTH - 2))], "fits": Holder(_nested(MAX_DEPTH - 2)),
              "raw": raw}
    item, counts = sanitised(inputs=inputs)
    too_deep = f"<unencodable: nested deeper than {MAX_DEPTH} levels>"
    assert item["inputs"]["held"] == [too_deep]
    assert item["inputs"]["fits"] == {"value": _nested(MAX_DEPTH - 2)}
    assert item["inputs"]["raw"] == _nested(MAX_DEPTH)
    assert counts == Counter(unencodable=1)


class HoldsItself:
    def model_dump(self, mode: str = "python") -> dict:
        return {"a": 1, "me": [self]}


def test_a_model_whose_data_holds_it_is_cut_where_the_cycle_closes():
    # its data form is what the encoder writes: walked as the model's own, the model met
    # again inside it is a cycle (without the C encoder msgspec recursed until it failed,
    # and the call was dropped)
    item, counts = sanitised(inputs={"m": HoldsItself()})
    assert item["inputs"]["m"] == {"a": 1, "me": ["<cycle: HoldsItself contains itself>"]}
    assert counts == Counter(cycle=1)
    problem = first_problem(_start(inputs={"m": HoldsItself()}), strict=False)
    assert (problem.path, problem.reason) == ("inputs['m']['me'][0]", "cycle")


def test_oversized_values_go_largest_first_and_small_neighbours_stay():
    big = "x" * 4000
    item, counts = sanitised(limit=5000, inputs={"small": "s", "a": big, "b": big, "c": "y" * 900})
    assert item["inputs"] == {"small": "s", "a": "<oversized: str of 4002 bytes>",
                              "b": "<oversized: str of 4002 bytes>", "c": "y" * 900}
    assert counts == Counter(oversized=2)


def test_an_oversized_value_deep_inside_is_replaced_alone():
    item, counts = sanitised(limit=3000, inputs={"doc": {"meta": {"id": 7}, "pages": [
        "p1", "z" * 5000, "p3"]}})
    assert item["inputs"]["doc"] == {"meta": {"id": 7}, "pages": [
        "p1", "<oversized: str of 5002 bytes>", "p3"]}
    assert counts == Counter(oversized=1)


def test_many_small_values_over_the_limit_are_replaced_until_it_fits():
    item, counts = sanitised(limit=3000, inputs={"rows": list(range(5000))})
    assert len(msgspec.json.encode(item)) <= 3000
    assert item["inputs"]["rows"] == "<oversized: list of 23891 bytes>"
    assert counts == Counter(oversized=1)


def test_bad_timestamps_are_taken_as_utc_or_replaced_and_counted():
    naive = dt.datetime(2026, 5, 1, 12, 30)
    clean, counts = sanitise_item(_start(started_at=naive), strict=False, max_payload=1 << 20)
    assert clean.started_at == naive.replace(tzinfo=UTC) and counts == Counter(timestamp=1)
    year_one = dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=14)))
    before = dt.datetime.now(UTC)
    end = EndedCallSchemaForInsert(project_id="e/p", id="0190a0f0-0000-7000-8000-000000000001",
                                   started_at=year_one, ended_at=naive, summary={})
    clean, counts = sanitise_item(end, strict=False, max_payload=1 << 20)
    assert clean.started_at >= before and clean.ended_at == naive.replace(tzinfo=UTC)
    assert counts == Counter(timestamp=2)


def test_the_direct_apis_error_names_the_first_problem_found():
    cyclic: dict = {}
    cyclic["me"] = cyclic
    problem = first_problem(_start(inputs={"ok": 1, "bad": [0, cyclic]}), strict=False)
    assert (problem.path, problem.reason) == ("inputs['bad'][1]['me']", "cycle")
    problem = first_problem(_start(inputs={"o": object()}), strict=True)
    assert (problem.path, problem.reason) == ("inputs['o']", "unencodable")
    assert first_problem(_start(inputs={"o": object()}), strict=False) is None  # stringified
