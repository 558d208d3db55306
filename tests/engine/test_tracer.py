"""The producer API, checked on the records it writes into shared memory (no sender)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import pickle
import re
import sys
import threading
import time

import msgspec
import pytest

import engine
from engine import ring
from engine.native import _accel
from engine.producer import _slot
from engine.wire import CompletedCallSchemaForInsert, EndedCallSchemaForInsert, splice_complete
from engine.wire import StartedCallSchemaForInsert as Start

PROJECT = "ent/proj"


@pytest.fixture
def eng(tmp_path):
    with engine.Engine(url="http://127.0.0.1:9", project=PROJECT, start_sender=False,
                       ring_bytes=1 << 20, max_slots=4, max_block_ms=50, shutdown_timeout_s=0,
                       dead_letter_path=str(tmp_path / "dl.jsonl")) as e:
        yield e
        if e._ringset is not None:  # what a test left unread: no ring set left behind
            drain(e)


def drain(eng) -> list[ring.Record]:
    reader = eng._ringset.reader()
    records = reader.read(100_000, 1 << 30)
    for r in records:
        reader.release(r.slot, r.end_pos)
    return records


def decoded(records) -> list[dict]:
    return [msgspec.json.decode(r.payload) for r in records]


def test_call_context_writes_a_start_and_an_end_that_splice_into_a_complete_call(eng):
    tracer = eng.producer()
    with tracer.call("predict", inputs={"q": "é?"}) as call:
        call.output = {"a": 1}
        call.summary = {"usage": {"m": {"total_tokens": 3}}}
    start, end = drain(eng)
    assert (start.kind, end.kind) == (ring.KIND_START, ring.KIND_END)
    assert start.call_id == end.call_id == bytes.fromhex(call.id.replace("-", ""))
    assert start.project == end.project == PROJECT.encode()
    complete = msgspec.json.decode(splice_complete(start.payload, end.payload, end.aux),
                                   type=CompletedCallSchemaForInsert)
    assert complete.id == call.id and complete.trace_id == call.trace_id != call.id
    assert complete.inputs == {"q": "é?"} and complete.output == {"a": 1}
    assert complete.started_at <= complete.ended_at
    assert complete.started_at.tzinfo is not None


def test_nested_calls_share_the_trace_and_name_their_parent(eng):
    tracer = eng.producer()
    with tracer.call("root") as root, tracer.call("child") as child:
        assert engine.current_call() is child
    assert engine.current_call() is None
    assert child.trace_id == root.trace_id and child.parent_id == root.id


def test_asyncio_tasks_nest_under_the_call_that_created_them(eng):
    tracer = eng.producer()

    @tracer.op
    async def leaf(x):
        await asyncio.sleep(0)
        return engine.current_call().parent_id

    async def main():
        async with tracer.call("root") as root:
            parents = await asyncio.gather(*(leaf(i) for i in range(3)))
        return root, parents

    root, parents = asyncio.run(main())
    assert parents == [root.id] * 3


def test_op_records_inputs_output_and_reraises_exceptions(eng):
    tracer = eng.producer()

    @tracer.op
    def add(a, b=2):
        return a + b

    @tracer.op(name="boom")
    def fail():
        raise KeyError("nope")

    assert add(1, b=3) == 4
    with pytest.raises(KeyError):
        fail()
    starts_ends = decoded(drain(eng))
    assert starts_ends[0]["op_name"].endswith("add") and starts_ends[0]["inputs"] == {"a": 1, "b": 3}
    assert starts_ends[1]["output"] == 4
    assert starts_ends[2]["op_name"] == "boom"
    assert starts_ends[3]["exception"] == "KeyError: 'nope'"


def test_call_start_and_end_accept_dicts_and_fill_missing_ids(eng):
    tracer = eng.producer()
    now = dt.datetime.now(dt.timezone.utc)
    started = tracer.call_start({"project_id": PROJECT, "op_name": "op", "started_at": now,
                                 "attributes": {}, "inputs": {"x": float("nan")}})
    call_id = started.id
    tracer.call_end(EndedCallSchemaForInsert(project_id=PROJECT, id=call_id, ended_at=now,
                                             summary={}))
    start, end = decoded(drain(eng))
    assert start["id"] == call_id and start["trace_id"] and start["inputs"] == {"x": None}
    assert end["id"] == call_id


def test_a_dict_missing_a_required_field_is_rejected_naming_it(eng):
    with pytest.raises(ValueError, match="op_name"):
        eng.producer().call_start({"project_id": PROJECT, "started_at": "2026-01-01T00:00:00Z",
                                   "attributes": {}, "inputs": {}})


@pytest.mark.parametrize("project_id", ["no-slash", "e/..", "./p"])
def test_a_bad_project_id_is_rejected(eng, project_id):
    start = Start(project_id=project_id, op_name="op", started_at=dt.datetime.now(dt.timezone.utc),
                  attributes={}, inputs={})
    with pytest.raises(engine.EncodeError, match="project_id") as raised:
        eng.producer().call_start(start)
    assert (raised.value.field, raised.value.reason) == ("project_id", "invalid")


def test_unencodable_values_are_stringified_and_counted(eng):
    class Opaque:
        def __str__(self):
            return "<opaque>"

    tracer = eng.producer()
    with tracer.call("op", inputs={"o": Opaque()}):
        pass
    start, _ = decoded(drain(eng))
    assert start["inputs"] == {"o": "<opaque>"}
    assert eng.stats()["producers"]["stringified"] == 1


def test_subclasses_of_int_float_and_str_are_written_as_their_values_as_weave_does(eng):
    """msgspec writes only their exact types (and enums) itself: an int subclass was stored
    "3" and counted stringified, a NaN float subclass "nan" (weave 0.54 stores 3 and null)."""
    import enum

    class Count(int):
        def __str__(self) -> str:
            return "three"

    class Score(float):
        pass

    class Label(str):
        pass

    class Level(enum.IntEnum):
        HIGH = 3

    if sys.version_info >= (3, 11):
        class Mode(enum.StrEnum):
            FAST = "fast"
    else:  # StrEnum is 3.11's: on 3.10 the str-mixed enum it is made of
        class Mode(str, enum.Enum):
            FAST = "fast"

    tracer = eng.producer()
    with tracer.call("op", inputs={"n": Count(3), "f": Score(0.5), "nan": Score("nan"),
                                   "s": Label("x"), "level": Level.HIGH, "mode": Mode.FAST,
                                   "keys": {Count(2): "two"}}) as call:
        call.output = [Score(1e300), Count(2**70)]
    start, end = decoded(drain(eng))
    assert start["inputs"] == {"n": 3, "f": 0.5, "nan": None, "s": "x", "level": 3,
                               "mode": "fast", "keys": {"2": "two"}}
    assert end["output"] == [1e300, 2**70]
    producers = eng.stats()["producers"]
    assert (producers["stringified"], producers["sanitised_nonfinite"]) == (0, 1)


def test_a_model_with_a_field_of_no_json_form_keeps_its_other_fields(eng):
    """A pydantic model with an ``arbitrary_types_allowed`` field was stored as its str()
    whole; now its fields, that one's value as its str(), counted once."""
    import pydantic

    class Opaque:
        def __str__(self) -> str:
            return "<opaque>"

    class Result(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)
        score: float
        at: dt.datetime
        handle: Opaque

    when = dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)
    tracer = eng.producer()
    with tracer.call("op", inputs={"r": Result(score=0.5, at=when, handle=Opaque())}):
        pass
    start, _ = decoded(drain(eng))
    assert start["inputs"] == {"r": {"score": 0.5, "at": "2026-01-02T00:00:00Z",
                                     "handle": "<opaque>"}}
    assert eng.stats()["producers"]["stringified"] == 1

def test_pydantic_models_and_numpy_values_are_written_as_their_data_not_their_str(eng):
    """An OpenAI/Anthropic SDK response or a structured output is a pydantic model, and
    scores are often numpy values: written as data (model_dump / tolist), not counted as
    stringified; a model whose own serializer fails falls back to its str(), counted."""
    import numpy as np
    import pydantic

    class Usage(pydantic.BaseModel):
        tokens: int
        at: dt.datetime

    class Reply(pydantic.BaseModel):
        text: str
        usage: Usage
        scores: list[float]

    class Broken(pydantic.BaseModel):
        x: int

        @pydantic.field_serializer("x")
        def fail(self, value):
            raise RuntimeError("no")

        def __str__(self):
            return "<broken>"

    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    reply = Reply(text="hi", usage=Usage(tokens=3, at=when), scores=[0.5])
    tracer = eng.producer()
    with tracer.call("op", inputs={"reply": reply, "n": np.int64(7), "m": np.array([[1, 2]]),
                                   "f": np.float32(0.25), "b": Broken(x=1)}) as call:
        call.output = reply
    start, end = decoded(drain(eng))
    assert start["inputs"] == {
        "reply": {"text": "hi", "usage": {"tokens": 3, "at": "2026-01-02T03:04:05Z"},
                  "scores": [0.5]},
        "n": 7, "m": [[1, 2]], "f": 0.25, "b": "<broken>"}  # fmt: skip
    assert end["output"] == start["inputs"]["reply"]
    assert eng.stats()["producers"]["stringified"] == 1  # only Broken


def test_a_value_whose_str_traces_a_call_while_being_encoded_is_not_corrupted(eng):
    """Stringifying may run user code that traces: the inner item is encoded into its own
    buffer (the outer encode is still using the writer's) and lands before the outer one."""
    tracer = eng.producer()

    class Tracing:
        def __str__(self):
            with tracer.call("inside-str", inputs={"deep": "x" * 300}):
                pass
            return "<tracing>"

    with tracer.call("outer", inputs={"v": Tracing(), "pad": "y" * 500}):
        pass
    records = drain(eng)
    items = decoded(records)
    assert [i.get("op_name") for i in items] == ["inside-str", None, "outer", None]
    assert items[2]["inputs"] == {"v": "<tracing>", "pad": "y" * 500}
    assert items[0]["inputs"] == {"deep": "x" * 300}


def test_strict_mode_raises_on_unencodable_values_in_the_direct_api_only(tmp_path):
    with engine.Engine(url="http://127.0.0.1:9", project=PROJECT, start_sender=False,
                       strict=True, ring_bytes=1 << 20, max_slots=2, shutdown_timeout_s=0,
                       dead_letter_path=str(tmp_path / "dl.jsonl")) as eng:
        tracer = eng.producer()
        with pytest.raises(engine.EncodeError, match="object") as raised:
            tracer.call_start(_start(inputs={"o": object()}))
        assert (raised.value.field, raised.value.reason) == ("inputs['o']", "unencodable")
        with tracer.call("op", inputs={"o": object()}):  # the op wrappers replace it
            pass
        start, _ = decoded(drain(eng))
        assert start["inputs"] == {"o": "<unencodable object: EncodeError: cannot encode "
                                        "value of type 'object' to JSON>"}
        assert eng.stats()["producers"]["sanitised_unencodable"] == 1


def test_an_item_larger_than_any_request_raises_naming_the_call(eng):
    tracer = eng.producer()
    start = Start(project_id=PROJECT, id="0190a0f0-0000-7000-8000-000000000001", op_name="op",
                  trace_id="0190a0f0-0000-7000-8000-000000000002", attributes={},
                  started_at=dt.datetime.now(dt.timezone.utc), inputs={"x": "y" * (2 << 20)})
    with pytest.raises(engine.PayloadTooLarge, match=start.id):
        tracer.call_start(start)
    assert eng.stats()["producers"]["too_large"] == 1


def _fill_ring(tracer) -> None:
    with pytest.raises(engine.RingFull):  # noqa: PT012 - the loop is what fills the ring
        for _ in range(10_000):
            tracer.call_start(_start(inputs={"pad": "z" * 4000}))


def test_a_full_ring_raises_after_max_block_ms_when_asked(tmp_path):
    """call_start raises RingFull; tracer.call (an op wrapper) logs, drops, and goes on."""
    with engine.Engine(url="http://127.0.0.1:9", project=PROJECT, start_sender=False,
                       on_full="raise", max_block_ms=20, ring_bytes=1 << 18, max_slots=2,
                       shutdown_timeout_s=0, dead_letter_path=str(tmp_path / "dl.jsonl")) as eng:
        tracer = eng.producer()
        _fill_ring(tracer)
        assert eng.stats()["producers"]["raised_full"] == 1
        with tracer.call("op", inputs={"pad": "z" * 4000}) as call:
            pass
        assert call.id is None  # not traced: its start met the full ring too
        assert eng.stats()["producers"]["raised_full"] == 2


def _dropping_engine(tmp_path) -> engine.Engine:
    """No sender and a small ring that drops an item at once when it is full."""
    return engine.Engine(url="http://127.0.0.1:9", project=PROJECT, start_sender=False,
                         on_full="drop", max_block_ms=1, ring_bytes=1 << 18, max_slots=2,
                         shutdown_timeout_s=0, dead_letter_path=str(tmp_path / "dl.jsonl"))


class Counted:
    """A value whose str() (user code, maybe with side effects) counts its runs."""

    def __init__(self) -> None:
        self.runs = 0

    def __str__(self) -> str:
        self.runs += 1
        return "<counted>"


def test_a_full_ring_is_said_once_a_minute_not_once_per_call(tmp_path, caplog):
    """``on_full="drop"`` said every dropped call (a long outage: thousands of lines a
    second), and a write waiting for room said so every ``max_block_ms`` in every waiting
    thread: now each is said at once, then at most once a minute with how often since."""
    _slot._process.said_full.clear()  # this process's earlier tests said them already
    with _dropping_engine(tmp_path) as eng, caplog.at_level(logging.WARNING):
        tracer = eng.producer()
        for _ in range(200):
            with tracer.call("op", inputs={"pad": "z" * 4000}):
                pass
        assert eng.stats()["producers"]["dropped_full"] > 100
    dropped = [r for r in caplog.records if "not traced: its ring stayed full" in r.getMessage()]
    assert len(dropped) == 1, len(dropped)
    caplog.clear()
    with engine.Engine(url="http://127.0.0.1:9", project=PROJECT, start_sender=False,
                       on_full="block", max_block_ms=10, ring_bytes=1 << 18, max_slots=2,
                       shutdown_timeout_s=0, dead_letter_path=str(tmp_path / "dl2.jsonl")) as eng, \
            caplog.at_level(logging.WARNING):
        tracer = eng.producer()
        writers = [threading.Thread(target=_fill_ring_blocking, args=(tracer,))
                   for _ in range(2)]
        for writer in writers:
            writer.start()
        assert _poll(lambda: eng.stats()["producers"]["blocked_ms"] > 0
                     or len(caplog.records) > 0, 30)
        time.sleep(0.5)  # some 50 waits of max_block_ms in each thread
        while any(w.is_alive() for w in writers):
            drain(eng)
            time.sleep(0.01)
    waiting = [r for r in caplog.records if "waited" in r.getMessage()]
    assert len(waiting) == 1, [r.getMessage() for r in waiting][:5]


def _fill_ring_blocking(tracer) -> None:
    """Writes 2,000 starts of 4 KB through a ring that holds ~60 (drained by the test)."""
    for _ in range(2_000):
        tracer.call_start(_start(inputs={"pad": "z" * 4000}))


def _poll(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_a_full_ring_drops_and_counts_when_asked(tmp_path):
    with _dropping_engine(tmp_path) as eng:
        tracer = eng.producer()
        for _ in range(200):
            with tracer.call("op", inputs={"pad": "z" * 4000}):
                pass
        kept = len(drain(eng))
        assert kept < 400
        assert eng.stats()["producers"]["dropped_full"] == 400 - kept


def test_an_item_that_meets_a_full_ring_is_encoded_once(tmp_path):
    """Waiting on a full ring reuses the bytes already encoded: a value's __str__ (user code,
    maybe with side effects) runs once per item, and it is counted once."""
    counted = Counted()
    with _dropping_engine(tmp_path) as eng:
        tracer = eng.producer()
        for _ in range(100):
            with tracer.call("op", inputs={"pad": "z" * 4000}):
                pass
        assert eng.stats()["producers"]["dropped_full"] > 0  # the ring is full now
        with tracer.call("op", inputs={"v": counted}):
            pass
        assert counted.runs == 1
        assert eng.stats()["producers"]["stringified"] == 1


def test_tracers_pickle_and_refuse_work_after_close(eng):
    tracer = pickle.loads(pickle.dumps(eng.producer()))
    with tracer.call("op"):
        pass
    assert len(drain(eng)) == 2
    tracer.close()
    with pytest.raises(engine.Closed):
        tracer.call_start(_start())
    with tracer.call("op") as call:  # an op wrapper: not traced, never raised
        pass
    assert call.id is None and drain(eng) == []


def test_invalid_settings_fail_fast_naming_the_field():
    with pytest.raises(engine.ConfigError, match="linger_ms"):
        engine.Engine(url="http://127.0.0.1:9", project=PROJECT, linger_ms=-1)
    with pytest.raises(engine.ConfigError, match="project"):
        engine.Engine(url="http://127.0.0.1:9", project="bad")
    with pytest.raises(engine.ConfigError, match="nonsense"):
        engine.Engine(url="http://127.0.0.1:9", project=PROJECT, nonsense=1)


def test_threads_sharing_a_tracer_write_whole_records(eng):
    import threading

    tracer = eng.producer()
    ids: list[str] = []

    def work() -> None:
        for i in range(300):
            with tracer.call("threaded", inputs={"i": i, "pad": "p" * (i % 97)}) as call:
                pass
            ids.append(call.id)

    threads = [threading.Thread(target=work) for _ in range(6)]
    sys_interval = __import__("sys").getswitchinterval()
    __import__("sys").setswitchinterval(1e-6)  # switch threads as often as possible
    reader = eng._ringset.reader()
    records: list[ring.Record] = []

    def read_all() -> None:
        batch = reader.read(100_000, 1 << 30)
        for r in batch:
            reader.release(r.slot, r.end_pos)
        records.extend(batch)

    try:
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            read_all()
        for t in threads:
            t.join()
        read_all()
    finally:
        reader.close()
        __import__("sys").setswitchinterval(sys_interval)
    assert len(records) == 2 * len(ids) == 2 * 6 * 300
    starts = {msgspec.json.decode(r.payload)["id"] for r in records if r.kind == ring.KIND_START}
    assert starts == set(ids)


def test_ids_that_are_not_uuids_are_rejected_naming_the_field(eng):
    start = Start(project_id=PROJECT, id="call-1", op_name="op", attributes={}, inputs={},
                  started_at=dt.datetime.now(dt.timezone.utc))
    with pytest.raises(ValueError, match="start.id"):
        eng.producer().call_start(start)


@pytest.mark.parametrize("api", ["call", "structs"])
def test_threads_meeting_a_full_ring_deliver_every_item_once(tmp_path, api):
    """The one-call paths (``tracer.call``'s put_item, ``call_start`` / ``call_end`` of
    Structs) run without the tracer's lock; an item they could not write comes back with
    its bytes, so threads waiting on a full ring never swap or lose items."""
    import sys
    import threading

    with engine.Engine(url="http://127.0.0.1:9", project=PROJECT, start_sender=False,
                       ring_bytes=1 << 16, max_slots=2, max_block_ms=10_000,
                       shutdown_timeout_s=0, dead_letter_path=str(tmp_path / "dl.jsonl")) as eng:
        tracer = eng.producer()
        ids: list[str] = []

        def work(k: int) -> None:
            for i in range(150):
                inputs = {"k": k, "i": i, "pad": "q" * (i * 37 % 3000)}
                if api == "call":
                    with tracer.call("t", inputs=inputs) as c:
                        pass
                    ids.append(c.id)
                else:
                    start = _start(project_id=PROJECT, inputs=inputs)
                    ids.append(tracer.call_start(start).id)
                    tracer.call_end(_end(start))

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        reader = eng._ringset.reader()
        records: list[ring.Record] = []
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        try:
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads) or reader.heads() != reader.released():
                batch = reader.read(7, 1 << 30)  # a slow reader: the ring stays full
                for r in batch:
                    reader.release(r.slot, r.end_pos)
                records.extend(batch)
        finally:
            sys.setswitchinterval(interval)
            for t in threads:
                t.join()
            reader.close()
        items = decoded(records)
        starts = [i["id"] for r, i in zip(records, items) if r.kind == ring.KIND_START]
        ends = [i["id"] for r, i in zip(records, items) if r.kind == ring.KIND_END]
        assert sorted(starts) == sorted(ends) == sorted(ids)
        assert len(ids) == 4 * 150 == len(set(ids))
        assert eng.stats()["producers"]["dropped_full"] == 0


def test_a_tracer_closed_while_encoding_raises_closed_and_writes_nothing(eng):
    tracer = eng.producer()
    with tracer.call("first"):
        pass  # claims the slot: later items take the one-call path

    class Closer:
        def __str__(self):
            tracer.close()
            return "<closer>"

    with tracer.call("op", inputs={"v": Closer()}) as call:  # logged, not raised
        pass
    assert call.id is None
    assert [r.kind for r in drain(eng)] == [ring.KIND_START, ring.KIND_END]


def test_items_encoded_in_place_survive_every_wrap_of_the_ring(tmp_path):
    """Items are encoded straight into the ring's free space; one that does not fit before
    the lap end (or the release limit) moves to a buffer and is written wrapped. Over many
    laps of a small ring, every record is exactly msgspec's encoding, in order."""
    import random

    from engine.wire import _codec

    rng = random.Random(5)
    with engine.Engine(url="http://127.0.0.1:9", project=PROJECT, start_sender=False,
                       ring_bytes=1 << 16, max_slots=2, max_block_ms=0, on_full="raise",
                       shutdown_timeout_s=0, dead_letter_path=str(tmp_path / "dl.jsonl")) as eng:
        tracer = eng.producer()
        reader = eng._ringset.reader()
        sent: list[bytes] = []
        got: list[bytes] = []

        def read(most: int) -> None:
            for r in reader.read(most, 1 << 30):
                reader.release(r.slot, r.end_pos)
                got.append(bytes(r.payload))

        for n in range(600):
            start = Start(project_id=PROJECT, id=_codec.uuid7(), trace_id=_codec.uuid7(),
                          op_name="op", started_at=dt.datetime.now(dt.timezone.utc),
                          attributes={"n": n}, inputs={"t": "w" * rng.choice((0, 7, 900, 9000, 20000))})
            try:
                tracer.call_start(start)
            except engine.RingFull:  # this thread is also the reader: make room, once more
                read(1000)
                tracer.call_start(start)
            sent.append(_codec.encoder.encode(start))
            if rng.random() < 0.3:
                read(rng.randint(1, 5))
        read(100_000)
        reader.close()
        assert got == sent
        assert eng.stats()["producers"]["raised_full"] > 0  # the ring was full, often


# ---- call_start / call_end of wire Structs: one C call each when the accelerator is built


def _start(**fields) -> Start:
    now = dt.datetime.now(dt.timezone.utc)
    return Start(**{"project_id": PROJECT, "id": engine.wire.uuid7(),
                    "trace_id": engine.wire.uuid7(), "op_name": "op", "started_at": now,
                    "attributes": {"a": 1}, "inputs": {"q": "x" * 100}, **fields})


def _end(start: Start, **fields) -> EndedCallSchemaForInsert:
    return EndedCallSchemaForInsert(**{
        "project_id": PROJECT, "id": start.id, "trace_id": start.trace_id,
        "started_at": start.started_at, "ended_at": dt.datetime.now(dt.timezone.utc),
        "output": {"a": [1, 2.5, None]}, "summary": {}, **fields})


def _uuid(text: str | None) -> bytes:
    return bytes.fromhex(text.replace("-", "")) if text else bytes(16)


@pytest.mark.parametrize(("end_fields", "flags", "has_trace"), [
    ({}, 1, True),                       # trace and start time: the sender can route it alone
    ({"trace_id": ""}, 0, False),        # an empty trace_id is none
    ({"trace_id": None}, 0, False),
    ({"started_at": None}, 0, True),     # no start time: the header carries the trace only
], ids=["trace-and-start", "empty-trace", "no-trace", "no-start-time"])
def test_struct_starts_and_ends_write_msgspecs_bytes_and_their_header(eng, end_fields, flags,
                                                                      has_trace):
    tracer = eng.producer()
    tracer.call_start(_start())  # the first write claims the slot; later ones take one call
    start = _start()
    end = _end(start, **end_fields)
    answer = tracer.call_start(start)
    assert tracer.call_end(end) is None
    assert type(answer) is engine.wire.CallStartRes
    assert (answer.id, answer.trace_id) == (start.id, start.trace_id)
    records = drain(eng)[1:]
    assert [bytes(r.payload) for r in records] == [engine.wire.encode(start),
                                                    engine.wire.encode(end)]
    head_start, head_end = records
    assert (head_start.kind, head_start.flags) == (ring.KIND_START, 0)
    assert head_start.call_id == head_end.call_id == _uuid(start.id)
    assert head_start.trace_id == _uuid(start.trace_id)
    assert (head_end.kind, head_end.flags) == (ring.KIND_END, flags)
    assert head_end.trace_id == (_uuid(start.trace_id) if has_trace else bytes(16))
    assert bytes(head_end.payload[head_end.aux:]).startswith(b'"ended_at":')
    if engine.native._accel.native is not None:
        assert tracer._fast_start is not None and tracer._fast_end is not None


def test_struct_values_that_are_stringified_are_counted_on_the_one_call_path(eng):
    class Opaque:
        def __str__(self):
            return "<opaque>"

    tracer = eng.producer()
    tracer.call_start(_start())
    start = _start(inputs={"o": Opaque()})
    tracer.call_start(start)
    tracer.call_end(_end(start, output=Opaque()))
    _, got_start, got_end = decoded(drain(eng))
    assert got_start["inputs"] == {"o": "<opaque>"} and got_end["output"] == "<opaque>"
    assert eng.stats()["producers"]["stringified"] == 2


def test_a_tracer_closed_while_encoding_a_struct_raises_closed_and_writes_nothing(eng):
    tracer = eng.producer()
    tracer.call_start(_start())

    class Closer:
        def __str__(self):
            tracer.close()
            return "<closer>"

    with pytest.raises(engine.Closed):
        tracer.call_start(_start(inputs={"v": Closer()}))
    with pytest.raises(engine.Closed):
        tracer.call_end(_end(_start()))
    assert len(drain(eng)) == 1


@pytest.mark.parametrize("as_dict", [False, True], ids=["struct", "dict"])
def test_items_that_meet_a_full_ring_follow_the_policy_and_are_encoded_once(tmp_path, as_dict):
    make_start, make_end = (_start_dict, _end_dict) if as_dict else (_start, _end)
    counted = Counted()
    with _dropping_engine(tmp_path) as eng:
        tracer = eng.producer()
        offered = 0
        for _ in range(100):
            start = make_start(inputs={"pad": "z" * 4000})
            tracer.call_start(start)
            tracer.call_end(make_end(start))
            offered += 2
        assert eng.stats()["producers"]["dropped_full"] > 0  # the ring is full now
        start = make_start(inputs={"v": counted})
        answer = tracer.call_start(start)  # answered even when dropped
        assert answer.id == (start["id"] if as_dict else start.id)
        offered += 1
        assert counted.runs == 1
        assert eng.stats()["producers"]["stringified"] == 1
        kept = len(drain(eng))
        assert eng.stats()["producers"]["dropped_full"] == offered - kept


def test_struct_starts_that_need_ids_or_carry_bad_ones_take_the_general_path(eng):
    tracer = eng.producer()
    tracer.call_start(_start())
    answer = tracer.call_start(_start(id=None, trace_id=None))
    assert answer.id and answer.trace_id and answer.id != answer.trace_id
    with pytest.raises(ValueError, match="id"):
        tracer.call_start(_start(id="not-a-uuid"))
    with pytest.raises(ValueError, match="trace_id"):
        tracer.call_end(_end(_start(), trace_id="not-a-uuid"))
    assert [decoded([r])[0]["id"] for r in drain(eng)][1:] == [answer.id]


def test_headers_carry_each_items_own_ids_whatever_order_ids_were_made_in(eng):
    """Ids made by uuid7() are remembered by object (the start and the end of a call
    name the same ones): headers must still match their own item's text, for more ids in
    flight than are remembered, and for equal text held by another object."""
    tracer = eng.producer()
    starts = [_start() for _ in range(40)]  # 80 ids made before any is written
    for start in reversed(starts):
        tracer.call_start(start)
        copy = "".join(list(start.id))  # the same text, another object
        tracer.call_end(_end(start, id=copy))
    records = drain(eng)
    assert len(records) == 80
    for record, item in zip(records, decoded(records)):
        assert record.call_id == _uuid(item["id"])
        assert record.trace_id == _uuid(item.get("trace_id"))


def test_a_struct_value_whose_str_traces_a_struct_call_is_not_corrupted(eng):
    """As with ``tracer.call``: a hook that traces while a Struct is encoded by the one-call
    path writes its own items first, from a buffer of its own."""
    tracer = eng.producer()
    tracer.call_start(_start())  # claims the slot: the items below take the one-call path
    inner = _start(inputs={"deep": "x" * 300})

    class Tracing:
        def __str__(self):
            tracer.call_start(inner)
            tracer.call_end(_end(inner))
            return "<tracing>"

    outer = _start(inputs={"v": Tracing(), "pad": "y" * 500})
    assert tracer.call_start(outer).id == outer.id
    items = decoded(drain(eng))[1:]
    assert [i["id"] for i in items] == [inner.id, inner.id, outer.id]
    assert items[2]["inputs"] == {"v": "<tracing>", "pad": "y" * 500}
    assert items[0]["inputs"] == {"deep": "x" * 300}


def test_call_start_and_end_take_their_item_by_name_too(eng):
    tracer = eng.producer()
    for _ in range(2):  # the first claims the slot (general path), the second is one call
        start = _start()
        answer = tracer.call_start(start=start)
        assert (answer.id, answer.trace_id) == (start.id, start.trace_id)
        assert tracer.call_end(end=_end(start)) is None
    assert [r.kind for r in drain(eng)] == [ring.KIND_START, ring.KIND_END] * 2


@pytest.mark.parametrize("call", [
    lambda t, s: t.call_start(),
    lambda t, s: t.call_start(s, s),
    lambda t, s: t.call_start(item=s),
    lambda t, s: t.call_start(s, start=s),
    lambda t, s: t.call_end(),
    lambda t, s: t.call_end(start=s),
], ids=["none", "two", "bad-name", "twice", "end-none", "end-bad-name"])
def test_call_start_and_end_with_wrong_arguments_raise_type_error(eng, call):
    tracer = eng.producer()
    tracer.call_start(_start())  # slot claimed: the C dispatch, where it is built, is in use
    with pytest.raises(TypeError):
        call(tracer, _start())
    assert len(drain(eng)) == 1


def test_a_dropped_tracer_that_wrote_is_collected(eng):
    import gc
    import weakref

    tracer = pickle.loads(pickle.dumps(eng.producer()))  # as a child has it (the engine
    # keeps the ones it made, to close them)
    start = _start()
    tracer.call_start(start)
    tracer.call_start(_start())
    tracer.call_end(_end(start))
    gone = weakref.ref(tracer)
    tracer.close()
    del tracer
    gc.collect()
    assert gone() is None
    assert len(drain(eng)) == 3


def test_the_tracers_call_dispatch_is_the_c_one_where_it_is_built():
    from engine.native import _accel
    from engine.producer import _calls

    native = _accel.native
    expected = getattr(native, "TracerCalls", None) or _calls._PyCalls
    assert _calls.CallsBase is expected and issubclass(engine.Tracer, expected)
    if native is not None and getattr(sys, "_is_gil_enabled", lambda: True)():
        assert expected is native.TracerCalls


# ---- call_start / call_end of dicts: one C call too when every value is of its field's type


def _start_dict(**fields) -> dict:
    start = _start()
    return {"project_id": PROJECT, "id": start.id, "trace_id": start.trace_id, "op_name": "op",
            "started_at": start.started_at, "attributes": {"a": 1}, "inputs": {"q": "x"},
            **fields}


def _end_dict(start: dict, **fields) -> dict:
    return {"project_id": PROJECT, "id": start["id"], "trace_id": start["trace_id"],
            "started_at": start["started_at"], "ended_at": dt.datetime.now(dt.timezone.utc),
            "output": {"a": [1, 2.5]}, "summary": {"usage": {}}, **fields}


_LOCAL = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))


class _Stamp(dt.datetime):
    pass


@pytest.mark.parametrize("fields", [
    {},                                                       # every value of its type
    {"display_name": "d", "parent_id": None, "wb_run_step": 3, "otel_dump": {"k": [1]}},
    {"started_at": _LOCAL},                                   # datetimes as they are
    {"started_at": "2026-01-02T03:04:05.000006Z"},            # ISO text in UTC: read in C
    {"started_at": "2026-01-02 03:04:05.9999995-00:00"},      # rounded up, carried
    {"started_at": "2026-01-02T03:04:05+02:00"},              # another offset: convert's
    {"started_at": "2026-02-30T03:04:05Z"},                   # no such day: convert refuses
    {"started_at": _Stamp(2026, 1, 2, tzinfo=dt.timezone.utc)},  # a subclass: convert's call
    {"wb_run_step": True}, {"wb_run_step": 2**70}, {"wb_run_step": 2.0},
    {"unknown_key": 1},                                       # convert ignores it
    {"attributes": {"a": {1: 2}}},                            # nested non-str keys: Any
    {"id": None}, {"trace_id": None},                         # made here
], ids=lambda f: ",".join(f"{k}={type(v).__name__}" for k, v in f.items()) or "plain")
def test_dict_starts_write_what_converting_them_to_the_struct_writes(eng, fields):
    tracer = eng.producer()
    tracer.call_start(_start())  # slot claimed: later calls take the one-call path
    drain(eng)
    item = _start_dict(**fields)
    try:
        want = msgspec.convert(item, Start, strict=False)
    except msgspec.ValidationError as exc:
        with pytest.raises(ValueError, match=str(exc).split(" - at ")[0][:30]):
            tracer.call_start(item)
        assert drain(eng) == []
        return
    answer = tracer.call_start(item)
    (record,) = drain(eng)
    if want.id is None or want.trace_id is None:  # the ids were made: compare the rest
        assert answer.id and answer.trace_id
        want = msgspec.structs.replace(want, id=answer.id, trace_id=answer.trace_id)
    assert (answer.id, answer.trace_id) == (want.id, want.trace_id)
    assert bytes(record.payload) == engine.wire.encode(want)
    assert record.call_id == _uuid(want.id) and record.trace_id == _uuid(want.trace_id)


@pytest.mark.parametrize("fields", [
    {}, {"trace_id": None}, {"trace_id": ""}, {"started_at": None}, {"is_eval": True},
    {"exception": "boom", "output": None, "wb_run_step_end": 7},
    {"is_eval": 1}, {"ended_at": "2026-01-02T03:04:05Z"}, {"ended_at": "2026-01-02t03:04:05.5z"},
    {"started_at": "2026-01-02T03:04:05.1+0000", "ended_at": "2026-01-02T03:04:06+01:00"},
    {"summary": {1: 2}},
    {"summary": None}, {"unknown_key": 1},
], ids=lambda f: ",".join(f"{k}={type(v).__name__}" for k, v in f.items()) or "plain")
def test_dict_ends_write_what_converting_them_to_the_struct_writes(eng, fields):
    tracer = eng.producer()
    tracer.call_start(_start())
    drain(eng)
    item = _end_dict(_start_dict(), **fields)
    try:
        want = msgspec.convert(item, EndedCallSchemaForInsert, strict=False)
    except msgspec.ValidationError:
        with pytest.raises(ValueError, match="EndedCallSchemaForInsert"):
            tracer.call_end(item)
        assert drain(eng) == []
        return
    assert tracer.call_end(item) is None
    (record,) = drain(eng)
    assert bytes(record.payload) == engine.wire.encode(want)
    flags = 1 if want.trace_id and want.started_at else 0
    assert (record.kind, record.flags) == (ring.KIND_END, flags)
    assert record.trace_id == (_uuid(want.trace_id) if want.trace_id else bytes(16))
    assert bytes(record.payload[record.aux:]).startswith(b'"ended_at":')


def test_dict_items_that_are_missing_a_required_field_are_rejected_naming_it(eng):
    tracer = eng.producer()
    tracer.call_start(_start())
    item = _start_dict()
    del item["op_name"]
    with pytest.raises(ValueError, match="op_name"):
        tracer.call_start(item)
    end = _end_dict(_start_dict())
    del end["summary"]
    with pytest.raises(ValueError, match="summary"):
        tracer.call_end(end)
    assert len(drain(eng)) == 1


def test_a_dict_value_whose_str_traces_a_dict_call_is_not_corrupted(eng):
    tracer = eng.producer()
    tracer.call_start(_start())
    inner = _start_dict()

    class Tracing:
        def __str__(self):
            tracer.call_start(inner)
            return "outer value"

    outer = _start_dict(inputs={"v": Tracing()})
    tracer.call_start(outer)
    records = drain(eng)[1:]
    by_id = {r.call_id: msgspec.json.decode(r.payload) for r in records}
    assert by_id[_uuid(inner["id"])]["inputs"] == {"q": "x"}
    assert by_id[_uuid(outer["id"])]["inputs"] == {"v": "outer value"}


@pytest.mark.skipif(engine.native._accel.native is None, reason="the one-call path is the C one")
def test_dicts_of_field_typed_values_take_the_one_call_path_and_others_the_general_one(
        eng, monkeypatch):
    tracer = eng.producer()
    tracer.call_start(_start())  # the first write claims the slot on the general path
    rest = []
    for name in ("_call_start_rest", "_call_end_rest"):
        original = getattr(engine.Tracer, name)
        monkeypatch.setattr(engine.Tracer, name, lambda self, item, done, _o=original:
                            rest.append((type(item).__name__, done)) or _o(self, item, done))
    drain(eng)
    plain = _start_dict()
    tracer.call_start(plain)
    tracer.call_end(_end_dict(plain))
    assert rest == []
    iso = _start_dict(started_at="2026-01-02T03:04:05.123Z")  # ISO text in UTC: in C too
    tracer.call_start(iso)
    tracer.call_end(_end_dict(iso, ended_at="2026-01-02T03:04:06+00:00"))
    assert rest == []
    tracer.call_start(_start_dict(started_at="2026-01-02T03:04:05+02:00"))
    tracer.call_start(_start_dict(extra=1))
    tracer.call_end(_end_dict(plain, is_eval=1))
    assert rest == [("dict", None)] * 3
    assert len(drain(eng)) == 7


@pytest.mark.parametrize("as_dict", [False, True], ids=["struct", "dict"])
def test_strict_mode_raises_on_the_one_call_path_and_writes_nothing(tmp_path, as_dict):
    with engine.Engine(url="http://127.0.0.1:9", project=PROJECT, start_sender=False,
                       strict=True, ring_bytes=1 << 20, max_slots=2, shutdown_timeout_s=0,
                       dead_letter_path=str(tmp_path / "dl.jsonl")) as eng:
        tracer = eng.producer()
        tracer.call_start(_start())  # the slot is claimed: later calls take one C call
        bad = _start_dict(inputs={"o": object()}) if as_dict else _start(inputs={"o": object()})
        with pytest.raises(engine.EncodeError, match="object"):
            tracer.call_start(bad)
        good = _start_dict() if as_dict else _start()
        tracer.call_start(good)
        records = drain(eng)
        assert len(records) == 2
        assert msgspec.json.decode(records[1].payload)["id"] == (
            good["id"] if as_dict else good.id)


# ---- the call handle (C where the accelerator is built, else pure Python): its contract


def test_a_call_that_raises_records_the_exception_and_restores_the_current_call(eng):
    tracer = eng.producer()
    with tracer.call("outer") as outer:
        with pytest.raises(KeyError), tracer.call("inner", inputs={"k": 1}) as inner:
            assert engine.current_call() is inner
            raise KeyError("missing")
        assert engine.current_call() is outer
        outer.output = {"ok": True}
        outer.summary = {"n": 1}
    assert engine.current_call() is None
    by_kind = {}
    for r in drain(eng):
        by_kind.setdefault(r.kind, []).append(msgspec.json.decode(r.payload))
    starts, ends = by_kind[ring.KIND_START], by_kind[ring.KIND_END]
    assert [s["op_name"] for s in starts] == ["outer", "inner"]
    assert starts[1]["parent_id"] == outer.id and starts[1]["trace_id"] == outer.trace_id
    assert starts[1]["inputs"] == {"k": 1} and "parent_id" not in starts[0]
    inner_end, outer_end = ends
    assert inner_end["id"] == inner.id and inner_end["exception"] == "KeyError: 'missing'"
    assert outer_end["output"] == {"ok": True} and outer_end["summary"] == {"n": 1}
    assert "exception" not in outer_end and outer_end["started_at"] == starts[0]["started_at"]


def test_begin_and_finish_trace_a_call_without_with(eng):
    tracer = eng.producer()
    handle = tracer.begin("manual", {"a": 1}, {"tag": "x"}, "Manual", PROJECT)
    assert handle.id and handle.trace_id and handle.started_at is not None
    assert engine.current_call() is handle
    handle.output = 42
    tracer.finish(handle, ValueError("bad"))
    assert engine.current_call() is None
    start, end = decoded(drain(eng))
    assert (start["display_name"], start["attributes"]) == ("Manual", {"tag": "x"})
    assert end["output"] == 42 and end["exception"] == "ValueError: bad"


def test_a_call_handle_needs_all_its_fields_and_starts_empty(eng):
    tracer = eng.producer()
    with pytest.raises(TypeError):
        engine.CallHandle(tracer, "op")
    handle = tracer.call("op")
    assert (handle.id, handle.output, handle.summary) == (None, None, {})  # not started yet


@pytest.mark.parametrize(("argument", "message"), [
    ({"op_name": 123}, "tracer.call: op_name must be a str, not int"),
    ({"inputs": [1, 2]}, "tracer.call: inputs must be a dict of argument name to value, not list"),
    ({"attributes": [1]}, "tracer.call: attributes must be a dict, not list"),
    ({"display_name": 5}, "tracer.call: display_name must be a str or None, not int"),
    ({"project": 5}, "tracer.call: project must be a str, not int"),
])
def test_a_wrong_typed_argument_of_call_or_begin_raises_naming_it_and_writes_nothing(
        eng, argument, message):
    """Before, each was written and the server refused the call (422): dead-lettered for
    good, without a word to the caller."""
    tracer = eng.producer()
    given = {"op_name": "op", "inputs": {}, "attributes": {}, "display_name": None,
             "project": PROJECT, **argument}
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        tracer.call(**given)
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        tracer.begin(**given)
    assert engine.current_call() is None
    assert drain(eng) == []


@pytest.mark.parametrize("summary", [None, "s", [1]])
def test_a_summary_that_is_not_a_dict_raises_where_it_is_set_and_the_call_ends(eng, summary):
    tracer = eng.producer()
    message = f"^call.summary must be a dict, not {type(summary).__name__}$"
    with pytest.raises(TypeError, match=message), tracer.call("op") as call:
        call.summary = summary
    with pytest.raises(AttributeError, match="cannot be deleted"):
        del call.summary
    start, end = decoded(drain(eng))
    assert end["summary"] == {} and end["exception"].startswith("TypeError: call.summary")


def test_a_handle_whose_output_was_deleted_raises_naming_it(eng):
    tracer = eng.producer()
    with pytest.raises(AttributeError, match="output"), tracer.call("op") as call:
        del call.output
    assert engine.current_call() is None
    (start,) = decoded(drain(eng))
    assert start["op_name"] == "op"


def test_an_exception_whose_text_deletes_the_output_raises_naming_it(eng):
    tracer = eng.producer()

    class Odd(Exception):
        def __str__(self):
            del handle.output  # user code run while the end is being made
            return "odd"

    with pytest.raises(AttributeError, match="output"), tracer.call("op") as handle:
        raise Odd()
    assert engine.current_call() is None
    assert len(drain(eng)) == 1  # the start only


@pytest.mark.skipif(_accel.native is None, reason="the pure-Python writer encodes under the "
                    "process's slot lock: the other thread's write would wait for this one")
def test_counts_stay_exact_while_another_thread_fails_its_writes(eng):
    """Counts are taken after each write and dropped with an item not written, per thread:
    a write that fails in another thread, while this one's item is half encoded (its NaN
    counted already), drops none of this thread's counts."""
    import math
    import threading

    tracer = eng.producer()
    failures: list[BaseException] = []

    def fail_once() -> None:
        try:
            tracer.call_start(_start(inputs={"x": "\ud800"}))
        except engine.EncodeError as exc:
            failures.append(exc)

    class MidEncode:
        def __str__(self) -> str:  # runs while this thread's item is being encoded
            other = threading.Thread(target=fail_once)
            other.start()
            other.join()
            return "mid"

    with tracer.call("op", inputs={"nan": math.nan, "mid": MidEncode()}):
        pass
    assert len(failures) == 1 and len(drain(eng)) == 2
    producers = eng.stats()["producers"]
    assert (producers["sanitised_nonfinite"], producers["stringified"]) == (1, 1)
