"""Many calls open at once in one process (an asyncio eval awaiting a rate-limited model):
the starts the sender sends before their ends go in upsert batches to a server that takes
them (``accepts_upsert_batch`` in its ``/server_info``), not one v2 request each; a server
that refuses them gets v2 requests after all. Against ``engine serve`` and the FaultServer.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import engine
from engine.server import serve_subprocess
from tests.engine.helpers import PROJECT, make_engine
from tests.faultserver import FaultServer


def _get(url: str, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + path, timeout=30) as reply:
        return json.load(reply)


def _stored(url: str) -> list[dict[str, Any]]:
    request = urllib.request.Request(
        url + "/calls/stream_query", data=json.dumps({"project_id": PROJECT}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=60) as reply:
        return [json.loads(line) for line in reply.read().splitlines()]


async def _open_then_end(tracer: Any, calls: int, while_open: Any = None) -> list[str]:
    """``calls`` async op calls open at once (each awaits its gate); ``while_open()`` runs
    in a thread once all are open; then every gate opens. The ids of the calls, in order."""
    loop = asyncio.get_running_loop()
    gate = loop.create_future()
    ids: list[str] = []

    @tracer.op
    async def predict(example: int, prompt: str) -> int:
        ids.append(engine.current_call().id)
        await gate
        return example

    tasks = [loop.create_task(predict(i, "p" * 300)) for i in range(calls)]
    while len(ids) < calls:
        await asyncio.sleep(0.001)
    if while_open is not None:
        await asyncio.to_thread(while_open)
    gate.set_result(None)
    assert await asyncio.gather(*tasks) == list(range(calls))
    return ids


async def _sliding(tracer: Any, calls: int, open_calls: int) -> None:
    """``calls`` async op calls, ``open_calls`` open at any time, ended oldest first."""
    loop = asyncio.get_running_loop()
    gates: dict[int, asyncio.Future] = {}

    @tracer.op
    async def predict(example: int, prompt: str) -> int:
        await gates[example]
        return example

    running: list[tuple[int, asyncio.Task]] = []
    for example in range(calls):
        gates[example] = loop.create_future()
        running.append((example, loop.create_task(predict(example, "p" * 300))))
        await asyncio.sleep(0)  # the task runs to its gate: its call is open
        if len(running) >= open_calls:
            oldest, task = running.pop(0)
            gates.pop(oldest).set_result(None)
            await task
    for example, task in running:
        gates.pop(example).set_result(None)
        await task


def test_a_few_open_calls_held_across_a_lap_end_keep_waiting_for_their_ends(tmp_path):
    """20 calls open at a time through rings of 64 KiB, 2,000 calls: the reading crosses
    a lap's end ~30 times with 20 starts held, ~10 KB of the ring. The padding a lap's end
    skips is not room they pin: none goes alone (before: ~20 at every lap's end, each a v2
    call/start and call/end request to this server, which takes no upsert batches)."""
    with FaultServer() as server, make_engine(server.url, tmp_path, ring_bytes=64 << 10) as eng:
        asyncio.run(_sliding(eng.producer(), 2000, 20))
        assert eng.flush(timeout_s=60)
        stats = eng.stats()
        assert len(server.stored_ids(PROJECT)) == 2000
    assert stats["eager_starts"] == 0
    assert not server.records("/call/start") and not server.records("/call/end")


def test_thousands_of_open_calls_go_in_upsert_batches_not_a_request_each(tmp_path):
    """2,000 open calls pin a ring of 256 KiB: their starts must go before their ends. They
    went as 2,000 v2 call/start requests and 2,000 call/end requests; now as items of a
    few upsert batches, and every call is stored whole."""
    calls = 2000
    with serve_subprocess(tmp_path / "t.db") as url:
        with make_engine(url, tmp_path, ring_bytes=256 << 10) as eng:
            ids = asyncio.run(_open_then_end(eng.producer(), calls))
            assert eng.flush(timeout_s=60)
            eager_starts = eng.stats()["eager_starts"]
        server = _get(url, "/stats")
        stored = {call["id"]: call for call in _stored(url)}
    assert eager_starts >= calls // 2  # the path under test ran: half the starts went alone
    assert server["requests_call_start"] == server["requests_call_end"] == 0
    assert server["requests_upsert_batch"] + server["requests_calls_complete"] <= 60
    assert set(stored) == set(ids)
    assert all(c["ended_at"] and c["started_at"] <= c["ended_at"] and c["output"] is not None
               for c in stored.values())


def test_open_calls_are_visible_after_eager_start_ms_through_upsert_batches(tmp_path):
    calls = 300
    seen: dict[str, Any] = {}

    def all_visible() -> None:
        for _ in range(3000):
            seen["stored"] = _stored(url)
            if len(seen["stored"]) == calls:
                break
        seen["stats"] = _get(url, "/stats")

    with serve_subprocess(tmp_path / "t.db") as url:
        with make_engine(url, tmp_path, eager_start_ms=100) as eng:
            ids = asyncio.run(_open_then_end(eng.producer(), calls, all_visible))
            assert eng.flush(timeout_s=60)
        stored = _stored(url)
    assert {c["id"] for c in seen["stored"]} == set(ids)  # seen while all were open
    assert not any(c["ended_at"] for c in seen["stored"])
    assert seen["stats"]["requests_call_start"] == 0
    assert seen["stats"]["requests_upsert_batch"] <= 20
    assert len(stored) == calls and all(c["ended_at"] for c in stored)


def test_a_server_that_offers_upsert_batch_but_refuses_it_gets_v2_requests(tmp_path):
    """A server that says it takes upsert batches and then answers one with
    CALLS_COMPLETE_MODE_REQUIRED: the sender re-reads its rings and sends what goes alone
    through v2 call/start and call/end from then on; the open call is visible, then whole."""
    with FaultServer(accepts_upsert_batch=True, complete_mode_required=True) as server, \
            make_engine(server.url, tmp_path, eager_start_ms=50) as eng:
        tracer = eng.producer()
        with tracer.call("long") as long_call:
            assert server.wait_for(lambda: (PROJECT, long_call.id) in server.stored, 30)
            assert not server.is_complete(PROJECT, long_call.id)
        assert eng.flush(timeout_s=30)
        assert server.is_complete(PROJECT, long_call.id)
    refused = server.records("/call/upsert_batch")
    assert refused and all(r.outcome == "complete_mode_required" for r in refused)
    assert server.records("/call/start") and server.records("/call/end")
