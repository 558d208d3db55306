"""Tracing never breaks user code: values the encoder cannot take, against a real server.

``@tracer.op`` and ``tracer.call`` (sync and async) return the user's value, store a
placeholder saying why, count it under ``sanitised_<reason>`` and leave no orphan start;
the direct API raises ``EncodeError`` (or its subclass ``PayloadTooLarge``) and writes
nothing. Every test checks exact counts at the ``engine serve`` it delivers to.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import math
import urllib.request
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgspec
import pytest

import engine
from engine import ring
from engine.producer._sanitise import REASONS
from engine.sender._deadletter import read_dead_letters
from engine.server import serve_subprocess
from engine.wire import (
    CompletedCallSchemaForInsert,
    EndedCallSchemaForInsert,
    StartedCallSchemaForInsert,
    utcnow,
    uuid7,
)

pytestmark = pytest.mark.integration

PROJECT = "user-code/values"
MAX_REQUEST_BYTES = 256 << 10
_names = itertools.count()


class BrokenStr:
    """An object with no JSON form whose str() raises too."""

    def __str__(self) -> str:
        raise ValueError("no text either")


def _cycle() -> dict:
    value: dict[str, Any] = {"a": 1}
    value["self"] = value
    return value


class HoldsItself:
    """A model whose data form holds the model itself (its ``model_dump`` recursed without
    end: without the C encoder the call was dropped, with it the server refused it)."""

    def model_dump(self, mode: str = "python") -> dict:
        return {"a": 1, "me": self}


def _wrapped(levels: int, inner: Any) -> Any:
    for _ in range(levels):
        inner = [inner]
    return inner


def _nested(levels: int) -> Any:
    """``levels`` lists, one inside the other, around 1."""
    return _wrapped(levels, 1)


_TOO_DEEP = "<unencodable: nested deeper than 100 levels>"


# kind -> (make the value, the reason counted, what the server stores for it)
KINDS: dict[str, tuple[Callable[[], Any], str, Any]] = {
    "cycle": (_cycle, "cycle", {"a": 1, "self": "<cycle: dict contains itself>"}),
    "model_dump_cycle": (HoldsItself, "cycle",
                         {"a": 1, "me": "<cycle: HoldsItself contains itself>"}),
    "lone_surrogate": (lambda: "ok \ud800 ok", "bad_string", "ok \ufffd ok"),
    "no_json_form": (BrokenStr, "unencodable",
                     "<unencodable BrokenStr: ValueError: no text either>"),
    "oversized": (lambda: "x" * (MAX_REQUEST_BYTES + 10), "oversized",
                  f"<oversized: str of {MAX_REQUEST_BYTES + 12} bytes>"),
    "nan": (lambda: math.nan, "nonfinite", None),
    "bytes": (lambda: b"\x00\xff", "bytes", "AP8="),
    # a dict with other keys than str is msgspec's to write, which refuses a NaN Decimal
    "nan_decimal_int_key": (lambda: {0: Decimal("NaN")}, "nonfinite", {"0": None}),
    # keys written as the same text: once, the last value (msgspec wrote "1" twice)
    "duplicate_key": (lambda: {1: "a", "1": "b"}, "duplicate_key", {"1": "b"}),
}


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    with serve_subprocess(tmp_path_factory.mktemp("serve") / "traces.db") as url:
        yield url


@pytest.fixture(scope="module")
def eng(server_url, tmp_path_factory):
    dead_letters = tmp_path_factory.mktemp("dl") / "dead_letters.jsonl"
    with engine.Engine(url=server_url, project=PROJECT, compression="none", ring_bytes=1 << 20,
                       max_slots=4, linger_ms=5, max_request_bytes=MAX_REQUEST_BYTES,
                       shutdown_timeout_s=20, dead_letter_path=str(dead_letters)) as e:
        yield e


def stored_calls(url: str, op_name: str) -> list[dict]:
    body = msgspec.json.encode({"project_id": PROJECT})
    request = urllib.request.Request(url + "/calls/stream_query", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=30) as resp:
        calls = [msgspec.json.decode(line) for line in resp.read().splitlines()]
    return [c for c in calls if c["op_name"] == op_name]


def sanitised(eng) -> dict[str, int]:
    producers = eng.stats()["producers"]
    return {reason: producers[f"sanitised_{reason}"] for reason in REASONS}


def delivered(eng) -> None:
    assert eng.flush(timeout_s=30)
    assert eng.stats()["dead_letters"] == 0


def traced(tracer, api: str, name: str, inputs: dict, output: Any) -> Any:
    """One call of ``name`` through ``api``; returns what the user's code got back."""
    if api == "op_sync":
        return tracer.op(name=name)(lambda value: output)(**inputs)
    if api == "op_async":
        async def user_fn(value: Any) -> Any:
            await asyncio.sleep(0)
            return output

        return asyncio.run(tracer.op(name=name)(user_fn)(**inputs))
    if api == "call_sync":
        with tracer.call(name, inputs=inputs) as call:
            call.output = output
        return call.output
    assert api == "call_async"

    async def traced_async() -> Any:
        async with tracer.call(name, inputs=inputs) as call:
            await asyncio.sleep(0)
            call.output = output
        return call.output

    return asyncio.run(traced_async())


APIS = ("op_sync", "op_async", "call_sync", "call_async")


@pytest.mark.parametrize("where", ["input", "output"])
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_value_we_cannot_encode_returns_the_users_value_and_stores_a_placeholder(
        eng, server_url, kind, api, where):
    make, reason, stored = KINDS[kind]
    value = make()
    name = f"values.{kind}.{api}.{where}.{next(_names)}"
    inputs = {"value": value if where == "input" else 1}
    output = value if where == "output" else 2
    before = sanitised(eng)

    returned = traced(eng.producer(), api, name, inputs, output)

    assert returned is output
    delivered(eng)
    (call,) = stored_calls(server_url, name)  # one call, started and ended: no orphan
    assert call["started_at"] and call["ended_at"] and call["exception"] is None
    assert (call["inputs"]["value"] if where == "input" else call["output"]) == stored
    after = sanitised(eng)
    assert {r: after[r] - before[r] for r in REASONS} == {r: int(r == reason) for r in REASONS}


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("levels", [101, 257, 900])
def test_a_value_nested_deeper_than_100_levels_is_cut_there_and_the_call_stored(
        eng, server_url, api, levels):
    """Nested 101 to ~990 levels, a value encodes, but engine serve refuses a body nested
    past 256 levels (weave's server past 200): the call was dead-lettered for good. The
    producer cuts it at 100 levels, the field's own included, as the sanitiser did only for
    values that failed to encode, and counts it."""
    name = f"values.deep.{levels}.{api}.{next(_names)}"
    before = sanitised(eng)

    output = _nested(levels)
    assert traced(eng.producer(), api, name, {"value": _nested(levels)}, output) is output

    delivered(eng)
    (call,) = stored_calls(server_url, name)
    assert call["inputs"]["value"] == _wrapped(99, _TOO_DEEP)  # inputs is the first level
    assert call["output"] == _wrapped(100, _TOO_DEEP)
    after = sanitised(eng)
    assert {r: after[r] - before[r] for r in REASONS} == {r: 2 * (r == "unencodable")
                                                          for r in REASONS}


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("the exception's own text fails")


@pytest.mark.parametrize("api", ["op_sync", "op_async"])
def test_the_users_own_exception_is_reraised_untouched_whatever_its_text(eng, server_url, api):
    raised = Unprintable("boom")
    name = f"values.raises.{api}.{next(_names)}"

    def fails(value: Any) -> Any:
        raise raised

    async def fails_async(value: Any) -> Any:
        raise raised

    with pytest.raises(Unprintable) as caught:
        if api == "op_sync":
            eng.producer().op(name=name)(fails)(value=_cycle())
        else:
            asyncio.run(eng.producer().op(name=name)(fails_async)(value=_cycle()))
    assert caught.value is raised
    delivered(eng)
    (call,) = stored_calls(server_url, name)
    assert call["exception"] == "Unprintable: <exception text unavailable: RuntimeError>"
    assert call["inputs"]["value"]["self"] == "<cycle: dict contains itself>"


def test_bad_timestamps_the_weave_integration_hands_over_are_sanitised_and_counted(
        eng, server_url):
    """The op wrappers stamp their own calls in UTC; the weave integration writes weave's
    timestamps: a naive one is taken as UTC, one out of range once in UTC is replaced by the
    time it was seen, each counted, and the call is stored whole."""
    from engine.integrations import weave as integration

    tracer = eng.producer()
    name = f"values.timestamps.{next(_names)}"
    naive = dt.datetime(2026, 5, 1, 12, 30)
    start = {"project_id": PROJECT, "id": uuid7(), "trace_id": uuid7(), "op_name": name,
             "started_at": naive, "attributes": {}, "inputs": {"q": 1}}
    end = {"project_id": PROJECT, "id": start["id"], "trace_id": start["trace_id"],
           "ended_at": dt.datetime(9999, 12, 31, 23, tzinfo=dt.timezone(-dt.timedelta(hours=5))),
           "output": 2, "summary": {}}
    before = sanitised(eng)
    seen_after = dt.datetime.now(dt.timezone.utc)
    integration._write(tracer, start, "start")  # what its trace server's call_start does
    integration._write(tracer, end, "end")
    seen_before = dt.datetime.now(dt.timezone.utc)
    delivered(eng)
    (call,) = stored_calls(server_url, name)
    # (Python 3.10's fromisoformat does not read a "Z")
    started = dt.datetime.fromisoformat(call["started_at"].replace("Z", "+00:00"))
    assert started == naive.replace(tzinfo=dt.timezone.utc)
    ended = dt.datetime.fromisoformat(call["ended_at"].replace("Z", "+00:00"))
    assert seen_after <= ended <= seen_before and call["output"] == 2
    after = sanitised(eng)
    assert {r: after[r] - before[r] for r in REASONS} == {r: 2 * (r == "timestamp")
                                                          for r in REASONS}


def test_an_op_traced_after_the_engine_closed_still_returns_the_users_value(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="engine.producer")  # a warning once per process
    with serve_subprocess(tmp_path / "t.db") as url:
        eng = engine.Engine(url=url, project=PROJECT, ring_bytes=1 << 20, max_slots=2,
                            dead_letter_path=str(tmp_path / "dl.jsonl"))
        tracer = eng.producer()
        square = tracer.op(name="square")(lambda x: x * x)
        assert square(3) == 9
        eng.close()
        assert square(4) == 16  # not traced: logged, never raised
        with tracer.call("after-close") as call:
            call.output = 1
        assert len(stored_calls(url, "square")) == 1
        assert stored_calls(url, "after-close") == []
    assert "not traced: this tracer is closed" in caplog.text


# -- the direct API ------------------------------------------------------------------------

def _start(**fields: Any) -> StartedCallSchemaForInsert:
    values: dict[str, Any] = dict(project_id=PROJECT, id=uuid7(), trace_id=uuid7(),
                                  op_name="direct", started_at=utcnow(), attributes={},
                                  inputs={})
    values.update(fields)
    return StartedCallSchemaForInsert(**values)


def _end(start: StartedCallSchemaForInsert, **fields: Any) -> EndedCallSchemaForInsert:
    values: dict[str, Any] = dict(project_id=PROJECT, id=start.id, trace_id=start.trace_id,
                                  started_at=start.started_at, ended_at=utcnow(), summary={})
    values.update(fields)
    return EndedCallSchemaForInsert(**values)


_PLUS_14 = dt.timezone(dt.timedelta(hours=14))
_MINUS_5 = dt.timezone(-dt.timedelta(hours=5))
# kind -> (start fields, the field its error names, end fields, that field, the reason)
INVALID: dict[str, tuple[dict, str, dict, str, str]] = {
    "cycle": ({"inputs": {"v": _cycle()}}, "inputs['v']['self']",
              {"output": [_cycle()]}, "output[0]['self']", "cycle"),
    "too_deep": ({"inputs": {"v": _nested(300)}}, "inputs['v']" + "[0]" * 99,
                 {"output": _nested(300)}, "output" + "[0]" * 100, "unencodable"),
    "lone_surrogate": ({"inputs": {"v": "\udc80"}}, "inputs['v']",
                       {"output": "\udc80"}, "output", "bad_string"),
    "oversized": ({"inputs": {"v": "x" * MAX_REQUEST_BYTES}}, "inputs",
                  {"output": "x" * MAX_REQUEST_BYTES}, "output", "oversized"),
    "nan_decimal_int_key": ({"inputs": {"v": {0: Decimal("NaN")}}}, "inputs['v']['0']",
                            {"output": {1: Decimal("-Infinity")}}, "output['1']", "nonfinite"),
    "naive_time": ({"started_at": dt.datetime(2024, 5, 1, 12)}, "started_at",
                   {"ended_at": dt.datetime(2024, 5, 1, 12)}, "ended_at", "timestamp"),
    "time_out_of_range": ({"started_at": dt.datetime(1, 1, 1, tzinfo=_PLUS_14)}, "started_at",
                          {"ended_at": dt.datetime(9999, 12, 31, 23, tzinfo=_MINUS_5)},
                          "ended_at", "timestamp"),
}


@pytest.mark.parametrize("as_dict", [False, True], ids=["struct", "dict"])
@pytest.mark.parametrize("which", ["start", "end"])
@pytest.mark.parametrize("kind", list(INVALID))
def test_the_direct_api_raises_encode_error_and_enqueues_nothing(eng, server_url, kind, which,
                                                                 as_dict):
    start_fields, start_field, end_fields, end_field, reason = INVALID[kind]
    tracer = eng.producer()
    warm_up = _start(op_name="direct.warm-up")  # the tracer's one-call path (C) is bound
    tracer.call_start(warm_up)
    tracer.call_end(_end(warm_up))
    good_start = _start(op_name=f"direct.{kind}.{next(_names)}")
    bad = _start(op_name=good_start.op_name, **start_fields) if which == "start" else _end(
        good_start, **end_fields)
    if as_dict:
        bad = msgspec.structs.asdict(bad)
    written = eng.stats()["ring"]["records_written"]
    with pytest.raises(engine.EncodeError) as raised:
        (tracer.call_start if which == "start" else tracer.call_end)(bad)
    assert raised.value.reason == reason
    assert raised.value.field == (start_field if which == "start" else end_field)
    assert raised.value.field in str(raised.value)
    if reason == "oversized":
        assert isinstance(raised.value, engine.PayloadTooLarge)
    assert eng.stats()["ring"]["records_written"] == written  # nothing enqueued
    tracer.call_start(good_start)  # the tracer goes on: a good call after it arrives whole
    tracer.call_end(_end(good_start, output="fine"))
    delivered(eng)
    (call,) = stored_calls(server_url, good_start.op_name)
    assert call["id"] == good_start.id and call["output"] == "fine"


def test_the_direct_api_writes_nan_as_null_and_bytes_as_base64_and_counts_them(eng, server_url):
    from decimal import Decimal

    tracer = eng.producer()
    start = _start(op_name=f"direct.lossy.{next(_names)}",
                   inputs={"f": [math.inf, -math.inf, math.nan], "d": Decimal("NaN"),
                           "b": bytearray(b"ab"), "ok": 1.5, "k": {1: "a", "1": "b"}})
    before = sanitised(eng)
    tracer.call_start(start)
    tracer.call_end(_end(start, output=memoryview(b"xyz")))
    delivered(eng)
    (call,) = stored_calls(server_url, start.op_name)
    assert call["inputs"] == {"f": [None, None, None], "d": None, "b": "YWI=", "ok": 1.5,
                              "k": {"1": "b"}}
    assert call["output"] == "eHl6"
    after = sanitised(eng)
    assert {r: after[r] - before[r] for r in REASONS} == dict.fromkeys(REASONS, 0) | {
        "nonfinite": 4, "bytes": 2, "duplicate_key": 1}


def test_an_item_that_is_not_json_is_dead_lettered_and_every_other_call_delivered(
        server_url, tmp_path):
    """A record the server cannot read (here a ``msgspec.Raw`` value that is not JSON, which
    msgspec writes as it is) is dead-lettered as its text: the sender once raised writing
    it, died, was restarted on the same record and died again, delivering nothing more."""
    dead_letters = tmp_path / "dead_letters.jsonl"
    with engine.Engine(url=server_url, project=PROJECT, compression="none", linger_ms=5,
                       dead_letter_path=str(dead_letters)) as eng:
        tracer = eng.producer()
        name = f"direct.not-json.{next(_names)}"
        starts = [_start(op_name=name, inputs={"i": i}) for i in range(5)]
        starts[2].inputs = {"raw": msgspec.Raw(b'{"a": NaN')}
        for start in starts:
            tracer.call_start(start)
            tracer.call_end(_end(start, output="ok"))
        assert eng.flush(timeout_s=30) is False  # settled, one call dead-lettered
        stats = eng.stats()
        assert stats["dead_letters"] == stats["dead_invalid"] == 1
        assert stats["sender_restarts"] == 0 and stats["splits_422"] >= 1
    stored = {call["id"] for call in stored_calls(server_url, name)}
    assert stored == {s.id for i, s in enumerate(starts) if i != 2}
    (line,) = dead_letters.read_bytes().splitlines()
    letter = msgspec.json.decode(line)
    assert letter["call_id"] == starts[2].id and letter["item_invalid"] is True
    assert '"raw":{"a": NaN' in letter["item"]


def test_an_item_nested_too_deep_to_decode_is_dead_lettered_and_every_other_call_delivered(
        server_url, tmp_path):
    """A record nested deeper than the sender can decode (as an engine wrote one before the
    producer cut values at MAX_DEPTH; here put straight into the ring) is refused by the
    server and dead-lettered as its text, and every call after it is delivered. Before:
    writing its dead letter raised RecursionError, the sender died, was restarted on the
    same record and died again; its ring filled and the user's loop blocked for good."""
    dead_letters = tmp_path / "dead_letters.jsonl"
    with engine.Engine(url=server_url, project=PROJECT, ring_bytes=1 << 20, linger_ms=5,
                       on_full="raise", max_block_ms=20_000,
                       dead_letter_path=str(dead_letters)) as eng:
        tracer = eng.producer()
        name = f"deep.{next(_names)}"
        start = _start(op_name=name)
        deep = CompletedCallSchemaForInsert(**msgspec.structs.asdict(start), ended_at=utcnow(),
                                            summary={}, output="DEEP")
        levels = 100_000  # past the C recursion limit of every Python (3.13's: 10,000)
        payload = msgspec.json.encode(deep).replace(b'"DEEP"', b"[" * levels + b"1" + b"]" * levels)
        with tracer.call(name, inputs={"i": -1}):  # the slot is claimed
            pass
        code = tracer._writer.raw_write(ring.KIND_COMPLETE, 0, deep.id, deep.trace_id,
                                        PROJECT.encode(), payload, 0)
        assert code in (ring.WRITTEN, ring.WRITTEN_RING)
        for i in range(3000):  # 3 MiB through a ring of 1 MiB
            with tracer.call(name, inputs={"i": i, "pad": "x" * 1000}):
                pass
        assert eng.flush(timeout_s=60) is False  # settled, one call dead-lettered
        stats = eng.stats()
        assert stats["dead_letters"] == stats["dead_invalid"] == 1
        assert stats["sender_restarts"] == 0 and stats["producers"]["raised_full"] == 0
    stored = stored_calls(server_url, name)
    assert len(stored) == 3001 and deep.id not in {call["id"] for call in stored}
    (letter,) = read_dead_letters(dead_letters)
    assert letter.call_id == deep.id and letter.item_invalid and letter.item_json == payload


def test_an_item_of_almost_max_request_bytes_is_delivered_through_a_ring_half_its_size(
        server_url, tmp_path):
    """One item may be up to twice ring_bytes (it used to be half of it): ring_bytes just
    above half of max_request_bytes delivers an item just under max_request_bytes."""
    max_request = (1 << 20) - (64 << 10)
    with engine.Engine(url=server_url, project=PROJECT, ring_bytes=1 << 19, max_slots=2,
                       max_request_bytes=max_request, linger_ms=5,
                       dead_letter_path=str(tmp_path / "dl.jsonl")) as big:
        tracer = big.producer()
        name = f"big.{next(_names)}"
        text = "y" * (max_request - 1000)
        for _ in range(3):  # the second and third wait for the ring to drain, then wrap
            with tracer.call(name, inputs={"text": text}) as call:
                call.output = "small"
        delivered(big)
        assert sum(big.stats()["producers"][f"sanitised_{r}"] for r in REASONS) == 0
    calls = stored_calls(server_url, name)
    assert len(calls) == 3 and all(c["inputs"]["text"] == text for c in calls)


def test_a_ring_smaller_than_max_request_bytes_bounds_one_item_and_says_so(server_url, tmp_path):
    """Twice ring_bytes below max_request_bytes: the ring is the limit, named in the error;
    the op wrappers replace what does not fit, counted as oversized."""
    big = "x" * (600 << 10)
    with engine.Engine(url=server_url, project=PROJECT, ring_bytes=1 << 18, max_slots=2,
                       linger_ms=5, dead_letter_path=str(tmp_path / "dl.jsonl")) as small:
        tracer = small.producer()
        with pytest.raises(engine.PayloadTooLarge,
                           match=r"\(twice ring_bytes\); largest field: inputs"):
            tracer.call_start(_start(inputs={"v": big}))
        name = f"small-ring.{next(_names)}"
        assert tracer.op(name=name)(lambda v: len(v))(big) == len(big)
        delivered(small)
        assert small.stats()["producers"]["sanitised_oversized"] == 1
    (call,) = stored_calls(server_url, name)
    assert call["inputs"] == {"v": f"<oversized: str of {len(big) + 2} bytes>"}
    assert call["output"] == len(big)
