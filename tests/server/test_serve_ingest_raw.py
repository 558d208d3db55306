"""Ingest through the raw models, end to end: refusals name the field, nothing of a refused
batch is kept, and a stored call reads back exactly the values it was sent with."""

import msgspec
import pytest

from tests.server.harness import PROJECT, complete, end, serving, start, upsert_batch

COMPLETE = "/v2/ent/proj/calls/complete"
STORES = ("sqlite", "count")


def _rich_call(call_id: str) -> dict:
    """A complete call whose JSON fields hold every kind of JSON value, non-ASCII included."""
    call = complete(call_id)
    call["inputs"] = {"text": "héllo ✓ 漢字", "n": 12345678901234567890123, "x": -0.25,
                      "big": 1.5e300, "nested": [{"a": [True, False, None]}, [], {}]}  # fmt: skip
    call["output"] = ["answer", 3, {"score": 0.875}]
    call["summary"] = {"usage": {"gpt-x": {"prompt_tokens": 3, "requests": 1}},
                       "status_counts": {"success": 1, "error": 0}}  # fmt: skip
    call["attributes"] = {"weave": {"client_version": "0.54.0"}, "eval": {"row": 7}}
    return call


def _sent_values(call: dict) -> dict:
    """The values a client sent; ``summary.weave`` is what the server derives on reads."""
    values = {k: call[k] for k in ("inputs", "output", "summary", "attributes")}
    values["summary"] = {k: v for k, v in values["summary"].items() if k != "weave"}
    return values


def test_a_complete_call_reads_back_the_values_it_was_sent(run, db_path):
    call = _rich_call("r1")

    async def scenario():
        async with serving(db_path) as api:
            assert await api.post(COMPLETE, {"batch": [call]}) == (200, {})
            read = await api.post("/call/read", {"project_id": PROJECT, "id": "r1"})
            return read, await api.query()

    (status, read), streamed = run(scenario())
    assert status == 200 and len(streamed) == 1
    for got in (read["call"], streamed[0]):
        assert _sent_values(got) == _sent_values(call)


def test_start_and_end_through_upsert_batch_read_back_the_values_sent(run, db_path):
    call = _rich_call("u1")
    start_half, end_half = ({k: call[k] for k in half("u1")} for half in (start, end))

    async def scenario():
        async with serving(db_path) as api:
            answer = await api.post(
                "/call/upsert_batch", upsert_batch(("end", end_half), ("start", start_half))
            )
            return answer, await api.query()

    (status, _), calls = run(scenario())
    assert status == 200 and _sent_values(calls[0]) == _sent_values(call)


def test_pretty_printed_fields_are_kept_as_sent_and_read_back_equal(run, db_path):
    """The raw path stores the client's text: spacing inside a field survives, values match."""
    body = msgspec.json.encode({"batch": [complete("p1")]}).replace(
        b'"inputs":{"question":"q-p1"}', b'"inputs": {\n  "question" : "q-p1",\n  "k": [1, 2]\n}'
    )

    async def scenario():
        async with serving(db_path) as api:
            assert (await api.post(COMPLETE, body))[0] == 200
            async with api.session.post(api.url + "/calls/stream_query",
                                        json={"project_id": PROJECT}) as resp:  # fmt: skip
                return await resp.read()

    line = run(scenario())
    assert b'"inputs":{\n  "question" : "q-p1",\n  "k": [1, 2]\n}' in line
    assert msgspec.json.decode(line)["inputs"] == {"question": "q-p1", "k": [1, 2]}


@pytest.mark.parametrize("store", STORES)
def test_malformed_json_inside_inputs_is_refused_and_nothing_is_kept(run, tmp_path, store):
    good = msgspec.json.encode({"batch": [complete("m0"), complete("m1")]})
    bad = good.replace(b'"inputs":{"question":"q-m1"}', b'"inputs":{"question":01}')

    async def scenario():
        async with serving(tmp_path / "t.db", store=store) as api:
            return await api.post(COMPLETE, bad), await api.get("/stats"), await api.query()

    (status, answer), (_, stats), calls = run(scenario())
    # malformed JSON is a 400 wherever it sits, as with the typed decode (WIRE.md §4: a
    # 422 means "an item is invalid, split to find it"; a broken body is not an item)
    assert status == 400 and answer["reason"].startswith("malformed JSON")
    assert calls == [] and stats["calls_complete"] == 0


@pytest.mark.parametrize("store", STORES)
def test_inputs_not_an_object_is_a_422_naming_the_item_and_field(run, tmp_path, store):
    calls = [complete(f"n{i}") for i in range(5)]
    calls[3]["inputs"] = ["not", "an", "object"]

    async def scenario():
        async with serving(tmp_path / "t.db", store=store) as api:
            refused = await api.post(COMPLETE, {"batch": calls})
            return refused, await api.get("/stats"), await api.query()

    (status, answer), (_, stats), stored = run(scenario())
    assert status == 422
    assert answer["reason"] == (
        "invalid request body: Expected `object`, got `array` - at `$.batch[3].inputs`"
    )
    assert stored == [] and stats["calls_complete"] == 0


@pytest.mark.parametrize("store", STORES)
def test_summary_not_an_object_on_an_end_is_a_422_naming_the_field(run, tmp_path, store):
    async def scenario():
        async with serving(tmp_path / "t.db", store=store) as api:
            return (
                await api.post("/call/end", {"end": end("e1", summary="oops")}),
                await api.post("/v2/ent/proj/call/end", {"end": end("e1", summary=1.5)}),
                await api.post("/call/upsert_batch",
                               upsert_batch(("start", start("e2")), ("end", end("e2", summary=[])))),
            )  # fmt: skip

    answers = run(scenario())
    assert [status for status, _ in answers] == [422, 422, 422]
    reasons = [answer["reason"] for _, answer in answers]
    assert reasons[0].endswith("Expected `object`, got `str` - at `$.end.summary`")
    assert reasons[1].endswith("Expected `object`, got `float` - at `$.end.summary`")
    assert reasons[2].endswith("Expected `object`, got `array` - at `$.batch[1].req.end.summary`")


def test_invalid_utf8_inside_a_field_is_a_400_on_the_count_store_too(run):
    body = msgspec.json.encode({"batch": [complete("b1")]}).replace(b"q-b1", b"q-\xff\xfe")

    async def scenario():
        async with serving(None, store="count") as api:
            return await api.post(COMPLETE, body)

    status, answer = run(scenario())
    assert status == 400 and "invalid UTF-8" in answer["reason"]
