"""The trace browser's calls stream with previews (``POST /ui/calls/stream_query``): the
compare page's cells show 160 characters of each answer, and the server sends no more."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.server._calls_view import preview
from tests.server.harness import PROJECT, end, serving, start, upsert_batch

REF = "weave:///ent/proj/object/Row:" + "d" * 60


def _cell(value, chars: int) -> str:
    """What app.js's short() shows of a value: ``chars`` characters of its JSON at most."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text[: chars - 1] + "…" if len(text) > chars else text


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40) | st.just(REF),
    lambda inner: st.lists(inner, max_size=12) | st.dictionaries(st.text(max_size=12), inner, max_size=12),
    max_leaves=30,
)


@settings(derandomize=True, max_examples=200, deadline=None)
@given(value=_json, chars=st.sampled_from([1, 3, 8, 20, 160]))
def test_a_preview_shows_as_the_whole_value_does(value, chars):
    assert _cell(preview(value, chars), chars) == _cell(value, chars)


def test_a_preview_keeps_refs_whole_and_cuts_what_lies_past_its_characters():
    long = {"a": "x" * 1000, "r": [REF] * 3, "n": list(range(1000)), "d": 1}
    assert preview(long, 3) == {"a": "xxx", "r": [REF] * 3, "n": [0, 1, 2]}
    assert preview({"a" * 9: [[[1]]]}, 3) == {"aaa": [[None]]}
    assert preview(long, 1000) == long


def _rows(text: bytes) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_the_route_cuts_the_paths_it_is_given_and_nothing_else(run, db_path):
    output = {"output": {"answer": "y" * 5000}, "scores": {"judge": {"reason": "z" * 300, "ok": True}}}
    body = {"project_id": PROJECT, "columns": ["id", "inputs", "output"]}

    async def scenario():
        async with serving(db_path) as api:
            items = [("start", start("p1", inputs={"example": "w" * 300})), ("end", end("p1", output=output))]
            assert (await api.post("/call/upsert_batch", upsert_batch(*items)))[0] == 200
            asked = {"plain": await api.post("/calls/stream_query", body),
                     "none": await api.post("/ui/calls/stream_query", body),
                     "cut": await api.post("/ui/calls/stream_query", {
                         **body, "previews": {"output.output": 10, "output.missing.x": 10}})}
            refused = [await api.post("/ui/calls/stream_query", {**body, "previews": p})
                       for p in ({"exception.x": 5}, {"output": 5}, {"output.output": 0})]
            return asked, refused

    asked, refused = run(scenario())
    assert all(status == 200 for status, _ in asked.values())
    plain, none, cut = (_rows(asked[k][1]) for k in ("plain", "none", "cut"))
    assert none == plain and plain[0]["output"] == output
    assert cut[0]["output"] == {"output": {"answer": "y" * 10}, "scores": output["scores"]}
    assert cut[0]["inputs"] == plain[0]["inputs"] and "attributes" in cut[0]
    assert [status for status, _ in refused] == [422, 422, 422], refused
    assert "is no path inside a call's inputs, output" in refused[0][1]["reason"], refused[0]
    assert "previews" in refused[2][1]["reason"], refused[2]
