"""Tracer.enqueue: items decoded into the server's raw ingest models (as ``engine ingest``
and the relay decode them) are written as call_start / call_end / call_complete write the
same calls: the same bytes, the same record headers."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest

import engine
from engine import ring
from engine.server._ingest_models import RawCompletedCall, RawEndedCall, RawStartedCall
from engine.wire import (
    CompletedCallSchemaForInsert,
    EndedCallSchemaForInsert,
    StartedCallSchemaForInsert,
    encode,
    uuid7,
)
from tests.engine.test_tracer import PROJECT, drain, eng  # noqa: F401  (the fixture)

T0 = dt.datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=dt.timezone.utc)


def _typed(call_id: str, trace_id: str) -> tuple:
    start = StartedCallSchemaForInsert(
        project_id=PROJECT, id=call_id, trace_id=trace_id, op_name="op", started_at=T0,
        attributes={"a": [1, 2.5]}, inputs={"q": "é?", "n": None}, wb_run_step=3)
    end = EndedCallSchemaForInsert(
        project_id=PROJECT, id=call_id, trace_id=trace_id, started_at=T0, ended_at=T0,
        output=[{"x": True}], summary={"usage": {}})
    complete = CompletedCallSchemaForInsert(
        **{f: getattr(start, f) for f in start.__struct_fields__},
        ended_at=T0, output="done", summary={})
    return start, end, complete


@pytest.mark.parametrize("end_trace", [True, False], ids=["end-with-trace", "end-without"])
def test_raw_items_are_written_as_their_typed_twins(eng, end_trace):  # noqa: F811
    tracer = eng.producer()
    start, end, complete = _typed(uuid7(), uuid7())
    if not end_trace:
        end = msgspec.structs.replace(end, trace_id=None, started_at=None)
    tracer.call_start(start)
    tracer.call_end(end)
    tracer.call_complete(complete)
    for mode, item, raw_type in (("start", start, RawStartedCall), ("end", end, RawEndedCall),
                                 ("complete", complete, RawCompletedCall)):
        tracer.enqueue(mode, msgspec.json.decode(encode(item), type=raw_type))
    typed, raw = (records := drain(eng))[:3], records[3:]
    assert [bytes(r.payload) for r in raw] == [encode(start), encode(end), encode(complete)]
    for t, r in zip(typed, raw, strict=True):
        assert (r.kind, r.flags, r.call_id, r.trace_id, r.project, r.aux) == (
            t.kind, t.flags, t.call_id, t.trace_id, t.project, t.aux)
    assert [r.kind for r in raw] == [ring.KIND_START, ring.KIND_END, ring.KIND_COMPLETE]
    assert raw[1].flags == (ring.FLAG_END_HAS_TRACE if end_trace else 0)


def test_a_raw_item_over_the_request_limit_raises_naming_the_call(tmp_path):
    with engine.Engine(url="http://127.0.0.1:9", project=PROJECT, start_sender=False,
                       max_request_bytes=4096, min_request_bytes=1024,
                       initial_request_bytes=2048, dead_letter_path=str(tmp_path / "d")) as e:
        _, _, complete = _typed(uuid7(), uuid7())
        complete = msgspec.structs.replace(complete, inputs={"big": "x" * 8000})
        item = msgspec.json.decode(encode(complete), type=RawCompletedCall)
        with pytest.raises(engine.PayloadTooLarge, match=complete.id):
            e.producer().enqueue("complete", item)
