"""Sending stored items again (engine/sender/_resend.py) to a loopback FaultServer."""

import functools

import msgspec
import pytest

from engine.sender._adaptive import SizeTarget
from engine.sender._resend import Resender, as_v2_single
from engine.sender._transport import Transport
from tests.faultserver import LOOP_NAMES, FaultServer, run_on

PROJECT = "ent/proj"
UPSERT = "/call/upsert_batch"
T0 = "2026-01-01T00:00:00Z"


@pytest.fixture(params=LOOP_NAMES)
def run(request):
    return functools.partial(run_on, request.param)


def _start(call_id: str) -> bytes:
    start = {"project_id": PROJECT, "id": call_id, "trace_id": call_id, "op_name": "op",
             "started_at": T0, "attributes": {}, "inputs": {"x": 1}}
    return msgspec.json.encode({"mode": "start", "req": {"start": start}})


def _end(call_id: str) -> bytes:
    end = {"project_id": PROJECT, "id": call_id, "ended_at": T0, "output": 2, "summary": {}}
    return msgspec.json.encode({"mode": "end", "req": {"end": end}})


async def _resend(url: str, items: list[bytes]):
    async with Transport(url) as transport:
        return await Resender(transport, SizeTarget(1 << 20)).send(UPSERT, items)


def test_a_spooled_upsert_batch_a_calls_complete_project_refuses_goes_as_v2_requests(run):
    """weave's server refuses an upsert batch of a project in its calls_complete table
    (CALLS_COMPLETE_MODE_REQUIRED): each item goes as a v2 call/start or call/end request
    instead, in order (before: the whole batch was dead-lettered, reason http)."""
    a, b = "0190a0b0-0000-7000-8000-0000000000a1", "0190a0b0-0000-7000-8000-0000000000b2"
    items = [_start(a), _start(b), _end(a), _end(b)]
    with FaultServer(weave_residence=True) as server:
        server.residence[PROJECT] = "complete"
        outcome = run(_resend(server.url, items))
        assert sorted(outcome.acked) == [0, 1, 2, 3] and not outcome.rejected and not outcome.kept
        assert server.is_complete(PROJECT, a) and server.is_complete(PROJECT, b)
        assert server.duplicate_deliveries() == 0
        assert [r.outcome for r in server.records(UPSERT)] == ["complete_mode_required"]
        assert [r.path for r in server.requests if r.outcome == "stored"] == [
            "/v2/ent/proj/call/start", "/v2/ent/proj/call/start",
            "/v2/ent/proj/call/end", "/v2/ent/proj/call/end"]


def test_an_upsert_item_as_a_v2_request_keeps_its_start_or_end_byte_for_byte():
    start = msgspec.json.decode(_start("c1"))["req"]["start"]
    route, body = as_v2_single(_start("c1"))
    assert route == "/v2/ent/proj/call/start" and msgspec.json.decode(body) == {"start": start}
    assert as_v2_single(_end("c1"))[0] == "/v2/ent/proj/call/end"
    assert as_v2_single(b'{"mode":"start","req":{"start":{"id":"c1"}}}') is None  # no project
    assert as_v2_single(b"not json") is None
