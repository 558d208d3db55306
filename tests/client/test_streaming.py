"""Streaming methods yield each JSONL line as it arrives, never holding the whole body."""

from __future__ import annotations

import asyncio
import threading

import msgspec
import pytest
from aiohttp import web

from engine.client import AsyncRemoteHTTPTraceServer, RemoteHTTPTraceServer
from tests.client.helpers import T0
from tests.client.stub import StubServer
from tests.faultserver import LOOP_NAMES, run_on

LINES = 2_000
WAIT_S = 60.0


class _SlowStream:
    """Writes one call, waits until the test says it saw it, then writes the rest."""

    def __init__(self) -> None:
        self.first_seen = threading.Event()
        self.finished = threading.Event()

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/jsonl"})
        await response.prepare(request)
        await response.write(_line(0))
        await asyncio.get_running_loop().run_in_executor(None, self.first_seen.wait, WAIT_S)
        for i in range(1, LINES):
            await response.write(_line(i))
        self.finished.set()
        await response.write_eof()
        return response


def _line(i: int) -> bytes:
    call = {"project_id": "a/b", "id": f"c{i}", "op_name": "op", "trace_id": "t",
            "started_at": T0, "inputs": {"pad": "x" * 200}}
    return msgspec.json.encode(call) + b"\n"


def test_sync_stream_yields_the_first_call_before_the_server_finished():
    stream = _SlowStream()
    with StubServer(stream) as stub, RemoteHTTPTraceServer(stub.url) as client:
        calls = client.calls_query_stream({"project_id": "a/b"})
        first = next(calls)
        finished_before_first = stream.finished.is_set()
        stream.first_seen.set()
        rest = list(calls)
    assert first.id == "c0" and not finished_before_first
    assert len(rest) == LINES - 1


@pytest.mark.parametrize("loop_name", LOOP_NAMES)
def test_async_stream_yields_the_first_call_before_the_server_finished(loop_name):
    stream = _SlowStream()

    async def scenario():
        async with AsyncRemoteHTTPTraceServer(stub.url) as client:
            calls = client.calls_query_stream({"project_id": "a/b"})
            first = await anext(calls)
            finished_before_first = stream.finished.is_set()
            stream.first_seen.set()
            rest = [c async for c in calls]
        return first, finished_before_first, rest

    with StubServer(stream) as stub:
        first, finished_before_first, rest = run_on(loop_name, scenario())
    assert first.id == "c0" and not finished_before_first
    assert len(rest) == LINES - 1


def test_abandoned_stream_does_not_poison_the_next_request():
    stream = _SlowStream()
    stream.first_seen.set()
    with StubServer(stream) as stub, RemoteHTTPTraceServer(stub.url) as client:
        calls = client.calls_query_stream({"project_id": "a/b"})
        next(calls)
        calls.close()
        assert len(list(client.calls_query_stream({"project_id": "a/b"}))) == LINES
