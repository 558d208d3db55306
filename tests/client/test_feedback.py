"""Batched feedback: client ids, ``/feedback/batch/create``, one create per item on 404."""

from __future__ import annotations

import msgspec
import pytest
from aiohttp import web

from engine.client import RemoteHTTPTraceServer
from tests.client.stub import StubServer


def _feedback(i: int, project: str = "a/b") -> dict:
    return {"project_id": project, "weave_ref": f"weave:///{project}/call/{i}",
            "feedback_type": "note", "payload": {"i": i}}


async def _no_batch_route(request: web.Request) -> web.Response:
    if request.path == "/feedback/batch/create":
        return web.json_response({"reason": "Not Found"}, status=404)
    body = msgspec.json.decode(await request.read())
    return web.json_response({"id": body["id"], "created_at": "2026-11-28T12:00:00Z",
                              "wb_user_id": "u", "payload": {}})


def test_batched_feedback_falls_back_to_one_create_per_item_on_404():
    with StubServer(_no_batch_route) as stub, \
            RemoteHTTPTraceServer(stub.url, should_batch=True) as client:
        made = [client.feedback_create(_feedback(i)) for i in range(5)]
        assert client.get_call_processor().flush(30)
        paths = stub.paths()
        bodies = [msgspec.json.decode(r.body) for r in stub.requests]
    assert paths[0] == "/feedback/batch/create"
    assert paths.count("/feedback/create") == 5
    sent_ids = [b["id"] for b, p in zip(bodies, paths) if p == "/feedback/create"]
    assert sent_ids == [m.id for m in made]  # the ids handed out are the ids sent


@pytest.mark.integration
def test_batched_feedback_is_stored_under_the_client_ids(server_url, project):
    with RemoteHTTPTraceServer(server_url, should_batch=True) as client:
        made = [client.feedback_create(_feedback(i, project))
                for i in range(3)]
        assert client.get_call_processor().flush(30)
        stored = client.feedback_query({"project_id": project}).result
    assert sorted(x["id"] for x in stored) == sorted(m.id for m in made)


def test_feedback_create_batch_answers_each_row_and_falls_back_on_404():
    """weave 0.54.0's own ``feedback_create_batch``: one request, or one create each on a
    server without the batch route (engine copy sends a page of feedback with it)."""
    with StubServer(_no_batch_route) as stub, RemoteHTTPTraceServer(stub.url) as client:
        res = client.feedback_create_batch({"batch": [{**_feedback(i), "id": f"id-{i}"}
                                                      for i in range(3)]})
        paths = stub.paths()
    assert [r.id for r in res.res] == ["id-0", "id-1", "id-2"]
    assert paths == ["/feedback/batch/create"] + ["/feedback/create"] * 3


@pytest.mark.integration
def test_feedback_create_batch_stores_every_row_under_its_id(server_url, project):
    with RemoteHTTPTraceServer(server_url) as client:
        res = client.feedback_create_batch({"batch": [{**_feedback(i, project), "id": f"fb-{i}"}
                                                      for i in range(3)]})
        stored = client.feedback_query({"project_id": project}).result
    assert [r.id for r in res.res] == ["fb-0", "fb-1", "fb-2"]
    assert sorted(x["id"] for x in stored) == ["fb-0", "fb-1", "fb-2"]
