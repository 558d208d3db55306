"""``should_batch=True``: calls go through an Engine, ids come back at once, forks deliver."""

from __future__ import annotations

import multiprocessing

import pytest

from engine.client import RemoteHTTPTraceServer
from tests.client.helpers import end, start

pytestmark = pytest.mark.integration


def _wait_readable(client, project, call_id, timeout_s=30.0):
    processor = client.get_call_processor()
    assert processor.flush(timeout_s)
    return client.call_read({"project_id": project, "id": call_id}).call


def test_unbatched_client_has_no_call_processor(client):
    assert client.get_call_processor() is None


def test_batched_call_start_answers_with_client_ids_and_delivers(server_url, project):
    with RemoteHTTPTraceServer(server_url, should_batch=True) as client:
        body = start(project)
        del body["id"], body["trace_id"]
        started = client.call_start({"start": body})
        assert started.id and started.trace_id and started.id != started.trace_id
        client.call_end({"end": end(project, started.id)})
        call = _wait_readable(client, project, started.id)
        stats = client.get_call_processor().stats()
    assert call is not None and call.output == {"y": 2} and call.trace_id == started.trace_id
    assert stats["calls"] and stats["feedback"]["failed"] == 0


def test_batched_call_start_batch_goes_through_the_engine(server_url, project):
    with RemoteHTTPTraceServer(server_url, should_batch=True) as client:
        s = start(project)
        res = client.call_start_batch({"batch": [
            {"mode": "start", "req": {"start": s}},
            {"mode": "end", "req": {"end": end(project, s["id"])}}]})
        assert res.res == [{"id": s["id"], "trace_id": s["trace_id"]}, {}]
        assert _wait_readable(client, project, s["id"]).ended_at is not None


def _child_traces(client, project, call_id, trace_id, result):
    body = start(project, id=call_id, trace_id=trace_id)
    client.call_start({"start": body})
    client.call_end({"end": end(project, call_id)})
    result.put(client.get_call_processor().flush(30))


def test_forked_child_delivers_through_the_parents_engine(server_url, project):
    ctx = multiprocessing.get_context("fork")
    with RemoteHTTPTraceServer(server_url, should_batch=True) as client:
        first = start(project)
        client.call_start({"start": first})  # the Engine now exists in the parent
        client.call_end({"end": end(project, first["id"])})
        child_call = start(project)
        result = ctx.Queue()
        child = ctx.Process(target=_child_traces,
                            args=(client, project, child_call["id"], child_call["trace_id"],
                                  result))
        child.start()
        flushed_in_child = result.get(timeout=60)
        child.join(60)
        call = _wait_readable(client, project, child_call["id"])
    assert child.exitcode == 0 and flushed_in_child
    assert call is not None and call.output == {"y": 2}
