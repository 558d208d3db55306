"""The asyncio twin runs the same plans: a round trip of each kind on asyncio and uvloop."""

from __future__ import annotations

import pytest

from engine import HTTPError
from engine.client import AsyncRemoteHTTPTraceServer
from engine.wire import files as fi
from tests.client.helpers import end, rows, start
from tests.faultserver import LOOP_NAMES, run_on

pytestmark = pytest.mark.integration


@pytest.fixture(params=LOOP_NAMES)
def run(request):
    return lambda coro: run_on(request.param, coro)


def test_async_calls_round_trip(run, server_url, project):
    async def scenario():
        async with AsyncRemoteHTTPTraceServer(server_url) as client:
            info = await client.server_info()
            started = await client.call_start({"start": start(project)})
            await client.call_end({"end": end(project, started.id)})
            read = await client.call_read({"project_id": project, "id": started.id})
            streamed = [c.id async for c in client.calls_query_stream({"project_id": project})]
            collected = await client.calls_query({"project_id": project})
            return info, started, read, streamed, collected

    info, started, read, streamed, collected = run(scenario())
    assert info.trace_server_version
    assert read.call.output == {"y": 2}
    assert streamed == [started.id] == [c.id for c in collected.calls]


def test_async_file_round_trip_and_errors(run, server_url, project):
    async def scenario():
        async with AsyncRemoteHTTPTraceServer(server_url) as client:
            made = await client.file_create(
                fi.FileCreateReq(project_id=project, name="a.txt", content=b"abc"))
            read = await client.file_content_read({"project_id": project,
                                                   "digest": made.digest})
            try:
                await client.obj_read({"project_id": project, "object_id": "absent",
                                       "digest": "latest"})
            except HTTPError as exc:
                return read.content, exc.status
            return read.content, None

    content, status = run(scenario())
    assert content == b"abc" and status == 404


def test_async_table_split_and_stream(run, server_url, project):
    async def scenario():
        async with AsyncRemoteHTTPTraceServer(server_url,
                                              remote_request_bytes_limit=2_000) as client:
            made = await client.table_create({"table": {"project_id": project,
                                                        "rows": rows(20, pad_bytes=150)}})
            return [r.val["i"] async for r in client.table_query_stream(
                {"project_id": project, "digest": made.digest})]

    assert run(scenario()) == list(range(20))


def test_async_feedback_create_batch_stores_every_row(run, server_url, project):
    async def scenario():
        async with AsyncRemoteHTTPTraceServer(server_url) as client:
            res = await client.feedback_create_batch({"batch": [
                {"project_id": project, "weave_ref": f"weave:///{project}/call/{i}", "id": f"a-{i}",
                 "feedback_type": "note", "payload": {"i": i}} for i in range(2)]})
            stored = await client.feedback_query({"project_id": project})
            return res, stored

    res, stored = run(scenario())
    assert [r.id for r in res.res] == ["a-0", "a-1"]
    assert sorted(x["id"] for x in stored.result) == ["a-0", "a-1"]
