"""After close(): the engine's own Closed error, and a ring set that still holds records
is kept for recovery instead of being removed."""

from __future__ import annotations

import os

import pytest

import engine
from engine.ring import _files as ring_files
from tests.engine.helpers import PROJECT, make_engine, trace_calls
from tests.faultserver import FaultServer
from tests.pipeline import poll_until


def test_flush_and_producer_after_close_raise_closed():
    eng = engine.Engine(url="http://127.0.0.1:9", project=PROJECT, start_sender=False)
    eng.close()
    for after_close in (eng.flush, eng.producer):
        with pytest.raises(engine.Closed) as raised:
            after_close()
        assert not isinstance(raised.value, ValueError)
    assert eng.close() == eng.stats()  # closing again returns the final stats


@pytest.mark.integration
def test_close_keeps_a_ring_set_holding_records_it_could_not_persist(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with FaultServer() as server:
        server.down()
        eng = make_engine(server.url, tmp_path, shutdown_timeout_s=1.0, spool_dir="off",
                          dead_letter_path=str(blocker / "sub" / "dead.jsonl"))
        segment = ring_files.spec_segment_path(eng.spec)
        ids = trace_calls(eng.producer(), 20)
        stats = eng.close()
        assert stats["undelivered"] == 2 * len(ids)  # a start and an end per call, unreleased
        assert stats["unpersisted_unwritable"] > 0
        assert os.path.exists(segment)  # kept: the next engine for this URL recovers it
        server.up()
        with make_engine(server.url, tmp_path) as nxt:
            assert nxt.stats()["orphans_adopted"] == 1
            assert server.wait_for(lambda: server.stored_ids(PROJECT) == set(ids), timeout_s=30), (
                len(server.stored_ids(PROJECT)), len(set(ids)), server.stored_ids() - set(ids))
    assert poll_until(lambda: not os.path.exists(segment), timeout_s=30)


def _fill_until_blocked(tracer, threads: int, direct: bool) -> tuple[list, list]:
    """``threads`` threads tracing 20 KB calls into one full ring (the server down), until
    each waits for room; (threads, what each raised)."""
    import threading

    from engine.wire import StartedCallSchemaForInsert, utcnow, uuid7

    raised: list = []
    big = "x" * 20_000

    def work() -> None:
        try:
            for _ in range(10_000):  # bounded: the ring holds ~50 of them
                if direct:
                    tracer.call_start(StartedCallSchemaForInsert(
                        project_id=PROJECT, id=uuid7(), trace_id=uuid7(), op_name="op",
                        started_at=utcnow(), inputs={"x": big}, attributes={}))
                else:
                    with tracer.call("op", inputs={"x": big}) as call:
                        call.output = big
        except BaseException as exc:  # noqa: BLE001 - what the test looks at
            raised.append(exc)

    workers = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    return workers, raised


@pytest.mark.integration
@pytest.mark.parametrize("direct", [False, True], ids=["op-wrapper", "direct-api"])
def test_close_returns_while_other_threads_wait_for_room_in_a_full_ring(tmp_path, direct):
    """on_full="block" (the default) with the server down: threads tracing into a full ring
    wait for room holding the process's ring lock, which close() takes to close their
    tracers: close() waited for ever (and so did a SIGTERM's). Now a waiting write stops
    waiting when the engine closes: counted dropped_full; the op wrappers return the user's
    values, the direct API raises Closed; close() persists the rest."""
    import time

    with FaultServer() as server:
        server.down()
        eng = make_engine(server.url, tmp_path, shutdown_timeout_s=1.0, max_block_ms=100)
        workers, raised = _fill_until_blocked(eng.producer(), 3, direct)
        poll_until(lambda: eng.stats()["ring"]["full_waits"] >= 3, timeout_s=30)
        time.sleep(0.3)  # every thread in its wait
        began = time.monotonic()
        stats = eng.close()
        took_s = time.monotonic() - began
        for worker in workers:
            worker.join(10)
        assert not any(worker.is_alive() for worker in workers)
    assert took_s < 10, took_s
    assert stats["producers"]["dropped_full"] >= 1
    if direct:
        assert raised and all(isinstance(exc, engine.Closed) for exc in raised), raised
    else:
        assert raised == []  # the op wrappers never raise into the user's code
    assert stats["undelivered"] == 0  # every record written was persisted
