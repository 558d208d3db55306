"""``@tracer.op`` on generator functions (a streamed LLM answer): the call lasts from the
first item to the end, its output is what was yielded, ops the body calls nest under it
and the consumer's code does not; send/throw/close reach the user's generator."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest

import engine
from engine.producer._ops import MAX_KEPT_ITEMS
from tests.engine.test_tracer import decoded, drain, eng  # noqa: F401 -- the fixture


def _calls(eng):  # noqa: F811
    """Starts and ends merged per call id, in start order."""
    calls: dict[str, dict] = {}
    for record in decoded(drain(eng)):
        calls.setdefault(record["id"], {}).update({k: v for k, v in record.items() if v is not None})
    return list(calls.values())


def _ms(call) -> float:
    started, ended = (dt.datetime.fromisoformat(call[k].replace("Z", "+00:00"))
                      for k in ("started_at", "ended_at"))  # fmt: skip
    return (ended - started).total_seconds() * 1000


def test_a_generator_op_lasts_until_its_last_item_and_nests_only_its_own_body(eng):  # noqa: F811
    tracer = eng.producer()

    @tracer.op
    def lookup(i):
        return i * 10

    @tracer.op
    def stream(n):
        for i in range(n):
            time.sleep(0.02)
            yield {"token": lookup(i)}

    seen = []
    with tracer.call("consumer") as consumer:
        for item in stream(3):
            seen.append((item, engine.current_call().id))
            with tracer.call("between"):
                pass
    assert [s[0] for s in seen] == [{"token": 0}, {"token": 10}, {"token": 20}]
    assert all(current == consumer.id for _, current in seen)  # the consumer's own context
    calls = _calls(eng)
    gen = next(c for c in calls if c["op_name"].endswith("stream"))
    assert gen["output"] == [{"token": 0}, {"token": 10}, {"token": 20}]
    assert gen["summary"] == {"yielded": 3} and "exception" not in gen
    assert gen["parent_id"] == consumer.id and _ms(gen) >= 55
    lookups = [c for c in calls if c["op_name"].endswith("lookup")]
    betweens = [c for c in calls if c["op_name"] == "between"]
    assert len(lookups) == 3 and {c["parent_id"] for c in lookups} == {gen["id"]}
    assert len(betweens) == 3 and {c["parent_id"] for c in betweens} == {consumer.id}


def test_a_consumer_that_stops_early_ends_the_call_without_an_error(eng):  # noqa: F811
    tracer = eng.producer()
    closed = []

    @tracer.op
    def stream():
        try:
            yield from range(100)
        finally:
            closed.append(True)

    for item in stream():
        if item == 1:
            break
    assert closed == [True]  # the user's generator was closed, as without the op
    (call,) = _calls(eng)
    assert call["output"] == [0, 1] and call["summary"] == {"yielded": 2}
    assert "exception" not in call


def test_an_error_inside_the_generator_ends_the_call_with_it_and_reaches_the_consumer(eng):  # noqa: F811
    tracer = eng.producer()
    boom = ValueError("half way")

    @tracer.op
    def stream():
        yield "a"
        raise boom

    with pytest.raises(ValueError) as raised:
        list(stream())
    assert raised.value is boom
    (call,) = _calls(eng)
    assert call["output"] == ["a"] and call["exception"] == "ValueError: half way"


def test_send_throw_and_the_return_value_reach_the_users_generator(eng):  # noqa: F811
    tracer = eng.producer()

    @tracer.op
    def echo():
        got = yield "ready"
        while True:
            try:
                got = yield f"got {got}"
            except KeyError:
                return "done"

    gen = echo()
    assert next(gen) == "ready"
    assert gen.send(1) == "got 1" and gen.send(2) == "got 2"
    with pytest.raises(StopIteration) as stop:
        gen.throw(KeyError("stop"))
    assert stop.value.value == "done"
    (call,) = _calls(eng)
    assert call["output"] == ["ready", "got 1", "got 2"] and "exception" not in call


def test_a_generator_never_iterated_is_no_call_and_a_long_one_keeps_its_first_items(eng):  # noqa: F811
    tracer = eng.producer()

    @tracer.op
    def stream(n):
        yield from range(n)

    stream(5)  # never iterated: nothing ran, nothing traced
    assert _calls(eng) == []
    n = MAX_KEPT_ITEMS + 500
    assert sum(stream(n)) == n * (n - 1) // 2
    (call,) = _calls(eng)
    assert call["output"] == list(range(MAX_KEPT_ITEMS)) and call["summary"] == {"yielded": n}


def test_an_async_generator_op_nests_its_body_and_ends_on_exhaustion_break_or_error(eng):  # noqa: F811
    tracer = eng.producer()

    @tracer.op
    async def lookup(i):
        await asyncio.sleep(0)
        return i

    @tracer.op
    async def stream(n, fail=False):
        for i in range(n):
            await asyncio.sleep(0.01)
            yield await lookup(i)
        if fail:
            raise RuntimeError("stream broke")

    async def main():
        async with tracer.call("consumer") as consumer:
            full, currents = [], []
            async for item in stream(3):
                full.append(item)
                currents.append(engine.current_call().id)
            early = stream(10)
            async for item in early:
                if item == 1:
                    break
            await early.aclose()
            with pytest.raises(RuntimeError, match="stream broke"):
                async for _ in stream(1, fail=True):
                    pass
            return consumer, full, currents

    consumer, full, currents = asyncio.run(main())
    assert full == [0, 1, 2] and currents == [consumer.id] * 3
    calls = _calls(eng)
    streams = [c for c in calls if c.get("op_name", "").endswith("stream")]
    assert [s["output"] for s in streams] == [[0, 1, 2], [0, 1], [0]]
    assert [s.get("exception") for s in streams] == [None, None, "RuntimeError: stream broke"]
    assert all(s["parent_id"] == consumer.id for s in streams) and _ms(streams[0]) >= 25
    lookups = [c for c in calls if c.get("op_name", "").endswith("lookup")]
    assert len(lookups) == 3 + 2 + 1
    assert {c["parent_id"] for c in lookups} <= {s["id"] for s in streams}
    assert [sum(c["parent_id"] == s["id"] for c in lookups) for s in streams] == [3, 2, 1]


def test_a_cancelled_consumer_cancels_the_async_generator_and_the_call_says_so(eng):  # noqa: F811
    tracer = eng.producer()
    cleaned = []

    @tracer.op
    async def stream():
        try:
            yield 0
            await asyncio.sleep(30)
            yield 1
        finally:
            cleaned.append(True)

    async def consume():
        async for _ in stream():
            pass

    async def main():
        task = asyncio.create_task(consume())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert cleaned == [True]
    (call,) = _calls(eng)
    assert call["output"] == [0] and call["exception"].startswith("CancelledError")

