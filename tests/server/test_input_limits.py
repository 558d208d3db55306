"""Each input limit of ``engine serve``: a 4xx naming the field and the limit, nothing stored
that could not be read back, and rows stored before the limits existed still read."""

import json
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.native import _accel
from engine.server._limits import MAX_JSON_DEPTH, json_depth_over, json_depth_over_py
from tests.server.harness import PROJECT, complete, serving

COMPLETE = "/v2/ent/proj/calls/complete"


@pytest.mark.parametrize(("text", "depth"), [
    ("[]", 1), ('{"a":[{"b":[]}]}', 4), ('["[[[[", "]]"]', 1), ('["\\"[[["]', 1),
    ('["\\\\", [[]]]', 3), ('["\\\\\\"[", {"k": "}}}"}]', 2), ("[" * 300 + "]" * 300, 300),
])  # fmt: skip
def test_depth_counts_brackets_outside_strings_only(text, depth):
    body = text.encode()
    for over in (json_depth_over, json_depth_over_py):
        assert not over(body, depth) and over(body, depth - 1)


def _deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def test_nesting_past_the_limit_is_a_422_and_within_it_reads_back(run, db_path):
    inside = complete("ok", inputs={"v": json.loads(_deep(MAX_JSON_DEPTH - 4))})

    async def scenario():
        async with serving(db_path) as api:
            query = f'{{"project_id": "{PROJECT}", "query": {_deep(1000)}}}'.encode()
            too_deep = await api.post("/calls/stream_query", query)
            stored = await api.post(COMPLETE, {"batch": [inside]})
            deeper = await api.post(COMPLETE, json.dumps({"batch": [complete("no")]})
                                    .replace('"inputs": {', f'"inputs": {{"v": {_deep(300)}, ').encode())  # fmt: skip
            return too_deep, stored, deeper, await api.query()

    (s1, b1), (s2, _), (s3, b3), calls = run(scenario())
    assert s1 == 422 and b1["reason"] == f"request body: JSON nested more than {MAX_JSON_DEPTH} levels deep"
    assert s2 == 200 and s3 == 422 and "256 levels" in b3["reason"]
    assert [c["id"] for c in calls] == ["ok"] and calls[0]["inputs"] == inside["inputs"]


def test_integers_past_sqlite_are_a_422_naming_the_field(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            return (
                await api.post(COMPLETE, {"batch": [complete("a", wb_run_step=2**63)]}),
                await api.post("/calls/stream_query", {"project_id": PROJECT, "limit": 2**63}),
                await api.post("/objs/query", {"project_id": PROJECT, "offset": 2**64}),
                await api.post("/trace/usage", {"project_id": PROJECT, "limit": 2**63}),
                await api.post("/calls/usage", {"project_id": PROJECT, "call_ids": ["a"],
                                                "limit": -1}),
                await api.query(),
            )

    (s1, b1), (s2, b2), (s3, b3), (s4, b4), (s5, b5), calls = run(scenario())
    assert s1 == 422 and "$.batch[0].wb_run_step: 9223372036854775808 is outside the 64-bit" in b1["reason"]
    assert s2 == 422 and "<= 9223372036854775807" in b2["reason"] and "$.limit" in b2["reason"]
    assert s3 == 422 and b3["reason"].startswith("offset: must be within 0..2**63-1")
    assert s4 == 422 and "<= 9223372036854775807" in b4["reason"] and "$.limit" in b4["reason"]
    assert s5 == 422 and ">= 0" in b5["reason"] and "$.limit" in b5["reason"]
    assert calls == []


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_time_outside_utc_datetimes_is_a_422_and_nothing_is_stored(run, db_path, when):
    async def scenario():
        async with serving(db_path) as api:
            bad = complete("bad")
            bad["started_at"] = when
            batch = {"batch": [complete("good"), bad]}
            return await api.post(COMPLETE, batch), await api.query()

    (status, body), calls = run(scenario())
    assert status == 422 and body["reason"].startswith(f"$.batch[1].started_at: {when[:4]}")
    assert "outside 0001-01-01..9999-12-31 in UTC" in body["reason"]
    assert calls == []  # the batch is all or nothing


def test_rows_stored_with_unreadable_times_by_an_older_server_still_read(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            await api.post(COMPLETE, {"batch": [complete("old")]})
        conn = sqlite3.connect(db_path)  # what a server before the limits let in
        conn.execute("UPDATE calls SET started_at_us = ? WHERE id = 'old'", (-62135596800000001,))
        conn.commit()
        conn.close()
        async with serving(db_path) as api:
            return await api.query()

    (call,) = run(scenario())
    assert call["id"] == "old" and call["started_at"].startswith("0001-01-01T00:00:00")


def test_a_filter_list_past_the_limit_is_a_422_naming_it(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            flt = {"op_names": [f"op{i}" for i in range(20_000)]}
            return await api.post("/calls/stream_query", {"project_id": PROJECT, "filter": flt})

    status, body = run(scenario())
    assert status == 422 and body["reason"] == "filter.op_names: at most 10000 values, got 20000"


@pytest.mark.parametrize(("doc", "reason"), [
    ({"resourceSpans": [1]}, "Expected `object`, got `int` - at `$.resourceSpans[0]`"),
    ({"resourceSpans": [{"scopeSpans": [{"spans": [{"spanId": "s"}]}]}]}, "spans[0]: missing or invalid"),
    ({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "t", "spanId": "s",
      "startTimeUnixNano": 10**30, "endTimeUnixNano": 1}]}]}]}, "startTimeUnixNano"),
])  # fmt: skip
def test_malformed_otlp_is_a_4xx_naming_where(run, db_path, doc, reason):
    async def scenario():
        async with serving(db_path) as api:
            return await api.post("/otel/v1/traces", doc, {"project_id": PROJECT,
                                                           "Content-Type": "application/json"})

    status, body = run(scenario())
    assert status == 422 and reason in body["reason"]


def test_streaming_routes_answer_errors_before_the_first_byte(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            # (an unknown table reads as empty, as weave answers: a bad sort is the error here)
            bad_sort = {"project_id": PROJECT, "digest": "nope",
                        "sort_by": [{"field": "", "direction": "asc"}]}  # fmt: skip
            return await api.post("/table/query_stream", bad_sort)

    status, body = run(scenario())
    assert status == 422 and "sort_by[0].field" in body["reason"]


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab\n'),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text('[]{}"\\k'), inner,
                                                                 max_size=4),
    max_leaves=40)


@pytest.mark.skipif(_accel.native is None, reason="the C scan is not built here")
@settings(max_examples=400, deadline=None)
@given(value=_JSON, limit=st.integers(0, 12))
def test_the_c_depth_scan_agrees_with_the_python_one(value, limit):
    """engine/native/_scan.c, which engine serve uses where it is built, on generated JSON
    whose strings hold brackets, quotes and backslashes."""
    body = json.dumps(value).encode()
    assert _accel.native.json_depth_over(body, limit) == json_depth_over_py(body, limit)
