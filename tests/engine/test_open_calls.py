"""Many calls open at once in one process (an asyncio eval awaiting a rate-limited model):
the starts the sender sends before their ends go in upsert batches to a server that takes
them (``accepts_upsert_batch`` in its ``/server_info``), not one v2 request each; a server
that refuses them gets v2 requests after all. Against ``engine serve`` and the FaultServer.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from typing import Any

import engine
from engine.sender._router import UPSERT_PROBE_DELAY_S
from engine.server import serve_subprocess
from tests.engine.helpers import PROJECT, make_engine, sliding_open_calls, trace_calls
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


def test_a_few_open_calls_held_across_a_lap_end_keep_waiting_for_their_ends(tmp_path):
    """20 calls open at a time through rings of 64 KiB, 2,000 calls: the reading crosses
    a lap's end ~30 times with 20 starts held, ~10 KB of the ring. The padding a lap's end
    skips is not room they pin: none goes alone (before: ~20 at every lap's end, each a v2
    call/start and call/end request to this server, which takes no upsert batches)."""
    with FaultServer() as server, make_engine(server.url, tmp_path, ring_bytes=64 << 10) as eng:
        asyncio.run(sliding_open_calls(eng.producer(), 2000, 20))
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
    CALLS_COMPLETE_MODE_REQUIRED: the refused batch's items go as v2 requests, and so does
    what goes alone of that project from then on; the open call is visible, then whole."""
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


def _each_stored_whole_once(server: FaultServer, ids: list[str]) -> None:
    assert server.wait_stored(len(ids))
    assert all(server.is_complete(PROJECT, i) for i in ids)
    assert server.duplicate_deliveries() == 0


def _open_calls_after_a_complete_one(server: FaultServer, tmp_path: Any, calls: int,
                                     try_upsert_batch: bool = True) -> list[str]:  # fmt: skip
    """One call made whole and acknowledged (calls/complete), the probe's delay waited, then
    ``calls`` calls open at once through a ring they pin (their starts go alone). Ids of all."""
    with make_engine(server.url, tmp_path, ring_bytes=256 << 10,
                     try_upsert_batch=try_upsert_batch) as eng:  # fmt: skip
        tracer = eng.producer()
        ids = trace_calls(tracer, 1)
        assert eng.flush(timeout_s=30)
        time.sleep(UPSERT_PROBE_DELAY_S)  # the sender's own wait before a project tries them
        ids += asyncio.run(_open_then_end(tracer, calls))
        assert eng.flush(timeout_s=60)
        assert eng.stats()["eager_starts"] >= calls // 2  # the path under test ran
    return ids


def test_open_calls_of_a_legacy_table_project_go_in_upsert_batches_unadvertised(tmp_path):
    """A server like weave's that does not say it takes upsert batches, and a project whose
    calls are in its legacy table: once the project's calls/complete was acknowledged, the
    starts and ends that go alone go in upsert batches, which it takes (before: 2,000 v2
    call/start and 2,000 call/end requests). Every call whole, none delivered twice."""
    calls = 2000
    with FaultServer(weave_residence=True) as server:
        server.residence[PROJECT] = "merged"
        ids = _open_calls_after_a_complete_one(server, tmp_path, calls)
        _each_stored_whole_once(server, ids)
        upserts = server.records("/call/upsert_batch")
        singles = server.records("/call/start") + server.records("/call/end")
    assert upserts and all(r.status == 200 for r in upserts)
    assert len(upserts) <= 60 and not singles


def test_by_default_a_server_that_does_not_say_it_takes_upsert_batches_gets_none(tmp_path):
    """try_upsert_batch is off by default: toward a server like weave's, what goes alone goes
    as v2 requests, as weave's own client sends it, even for a legacy-table project that
    would take upsert batches (a new project's first calls may not yet show on weave's
    server, which would then put an upsert batch in the other table)."""
    calls = 200
    with FaultServer(weave_residence=True) as server:
        server.residence[PROJECT] = "merged"
        with make_engine(server.url, tmp_path, eager_start_ms=50) as eng:
            tracer = eng.producer()
            ids = trace_calls(tracer, 1)
            assert eng.flush(timeout_s=30)
            time.sleep(UPSERT_PROBE_DELAY_S)  # as long as a project waits before it tries them
            ids += asyncio.run(_open_then_end(tracer, calls, while_open=lambda: time.sleep(1)))
            assert eng.flush(timeout_s=60)
            assert eng.stats()["eager_starts"] == calls  # each went alone, after 50 ms
        assert server.wait_stored(len(ids))
        assert all(server.is_complete(PROJECT, i) for i in ids)
        upserts = server.records("/call/upsert_batch")
        singles = server.records("/call/start")
    assert not upserts and len(singles) == calls


def test_a_calls_complete_project_refuses_upsert_batches_and_gets_v2_requests(tmp_path):
    """The same toward a project in weave's calls_complete table: it answers the first
    upsert batches CALLS_COMPLETE_MODE_REQUIRED (storing nothing of them); their items go as
    v2 requests, and so does everything of the project after; every call whole, none twice,
    and the project's calls never reach the legacy table."""
    calls = 500
    with FaultServer(weave_residence=True) as server:
        ids = _open_calls_after_a_complete_one(server, tmp_path, calls)
        _each_stored_whole_once(server, ids)
        assert server.residence[PROJECT] == "complete"
        refused = server.records("/call/upsert_batch")
        singles = server.records("/call/start")
    assert refused and all(r.outcome == "complete_mode_required" for r in refused)
    assert len(refused) <= 8  # the batches in flight when the first answer came, at most
    assert len(singles) >= calls // 2


def test_an_empty_project_gets_no_upsert_batch_before_a_v2_request_of_it_is_acknowledged(tmp_path):
    """Open calls of a project with no calls yet: an upsert batch would pin it to weave's
    legacy table. Their starts go as v2 requests first (the project's table is then
    calls_complete); an upsert batch is tried only after one of them was stored, and is
    refused."""
    with FaultServer(weave_residence=True) as server, \
            make_engine(server.url, tmp_path, ring_bytes=256 << 10, try_upsert_batch=True) as eng:
        asyncio.run(_open_then_end(eng.producer(), 500))
        assert eng.flush(timeout_s=60)
        assert server.residence[PROJECT] == "complete"
        assert len(server.stored_ids(PROJECT)) == 500
        outcomes = [(r.path, r.outcome) for r in server.requests if r.method == "POST"]
    assert outcomes[0] == (f"/v2/{PROJECT}/call/start", "stored")
    assert all(o == "complete_mode_required" for p, o in outcomes if p == "/call/upsert_batch")


def test_a_server_without_the_upsert_route_gets_v2_requests_for_every_project(tmp_path):
    """A server (or proxy) that answers /call/upsert_batch 404: the refused batch's items go
    as v2 requests and no project tries upsert batches again; every call whole, none twice."""
    calls = 500
    with FaultServer(upsert_route=False) as server:
        ids = _open_calls_after_a_complete_one(server, tmp_path, calls)
        _each_stored_whole_once(server, ids)
        refused = server.records("/call/upsert_batch")
    assert refused and all(r.status == 404 for r in refused) and len(refused) <= 8


def test_starts_queued_as_v2_requests_go_in_upsert_batches_once_their_project_takes_them(tmp_path):
    """2,000 open calls of a legacy-table project toward a server 50 ms away: after
    eager_start_ms their starts are routed alone at once, as v2 requests, before the project
    may try upsert batches (2 s after its first acknowledged v2 request); those still queued
    then go in upsert batches instead of one request each (~2.5 s; before: 1,952 call/start
    and as many call/end requests, 27 s at 8 in flight). Every call whole, none twice."""
    calls = 2000
    with FaultServer(weave_residence=True, stall_s=0.05) as server:
        server.residence[PROJECT] = "merged"
        # 2 in flight: up to 8 v2 requests at once (SINGLES_PER_SLOT), ~320 in the 2 s
        # before the project may try upsert batches, fewer than half the calls on any box
        with make_engine(server.url, tmp_path, ring_bytes=4 << 20, eager_start_ms=100,
                         try_upsert_batch=True, max_in_flight=2, initial_in_flight=2,
                         shutdown_timeout_s=5.0) as eng:
            tracer = eng.producer()
            trace_calls(tracer, 1)  # the sender up and going: it reads the starts at once
            assert eng.flush(timeout_s=30)
            # held past eager_start_ms before they end (a loaded machine's sender could
            # otherwise read each start with its end and pair them: none alone)
            ids = asyncio.run(_open_then_end(tracer, calls, while_open=lambda: time.sleep(0.5)))
            assert eng.flush(timeout_s=8)
            assert eng.stats()["eager_starts"] >= calls // 2  # the path under test ran
        assert all(server.is_complete(PROJECT, i) for i in ids)
        assert server.duplicate_deliveries() == 0
        upserts = server.records("/call/upsert_batch")
        singles = server.records("/call/start") + server.records("/call/end")
    assert upserts and all(r.status == 200 for r in upserts)
    assert len(singles) < calls // 2


def test_the_end_of_a_call_whose_start_went_alone_waits_for_the_start_s_request(tmp_path):
    """weave's server answers a v2 call/end whose start it has not stored 404 ("Cannot end
    call …: no start found in project …"), and two requests in flight arrive in any order.
    Starts gone alone (after eager_start_ms) answered 0.3 s late: their ends wait for them.
    Before: the ends overtook them, were answered 404, and the sender took the 404 for a
    server without calls/complete and switched every call to upsert batches."""
    calls = 40
    with FaultServer(end_needs_start=True, start_stall_s=0.3) as server, \
            make_engine(server.url, tmp_path, eager_start_ms=50) as eng:
        tracer = eng.producer()
        ids = trace_calls(tracer, 1)  # the sender up and going
        assert eng.flush(timeout_s=30)
        ids += asyncio.run(_open_then_end(tracer, calls, while_open=lambda: time.sleep(0.5)))
        assert eng.flush(timeout_s=30)
        assert not [r for r in server.requests if r.status == 404]
        assert eng.stats()["eager_starts"] == calls
        assert all(server.is_complete(PROJECT, i) for i in ids)
        assert len(server.records("/call/end")) == calls
        assert not server.records("/call/upsert_batch")


def test_the_end_of_a_call_whose_start_was_not_delivered_follows_it_to_the_dead_letters(tmp_path):
    """A start gone alone that the server keeps refusing (503) past delivery_deadline_s is
    dead-lettered; its end is not sent (weave's server would answer 404: no start) but
    written after it, reason start_not_delivered; a replay sends both, start first."""
    from engine.sender._deadletter import read_dead_letters
    from engine.sender._replay import replay

    calls = 5
    dead = tmp_path / "dead_letters.jsonl"
    with FaultServer(start_status=503) as server, \
            make_engine(server.url, tmp_path, eager_start_ms=50, delivery_deadline_s=1.0,
                        spool_dir="off") as eng:
        tracer = eng.producer()
        trace_calls(tracer, 1)  # the sender up and going
        assert eng.flush(timeout_s=30)
        ids = asyncio.run(_open_then_end(tracer, calls, while_open=lambda: time.sleep(0.5)))
        assert not eng.flush(timeout_s=30)  # settled, and not all delivered
        assert eng.stats()["dead_letters"] == 2 * calls
        assert not server.records("/call/end")  # never sent: there is no start to end
    letters = [(lt.route.rsplit("/", 1)[-1], lt.call_id, lt.reason)
               for lt in read_dead_letters(dead)]  # fmt: skip
    assert sorted((kind, i) for kind, i, _ in letters) == sorted(
        [("start", i) for i in ids] + [("end", i) for i in ids])
    for kind, call_id, reason in letters:  # each end after its start, for that reason
        if kind == "end":
            assert letters.index(("start", call_id, letters[0][2])) < letters.index(
                (kind, call_id, reason))
            assert reason.startswith("start_not_delivered"), reason
    with FaultServer(end_needs_start=True) as healthy:
        summary = asyncio.run(replay(healthy.url, None, str(dead)))
        assert summary.complete
        assert not [r for r in healthy.requests if r.status == 404]
        assert all(healthy.is_complete(PROJECT, i) for i in ids)


def test_an_end_answered_404_no_start_found_is_sent_again_until_its_start_shows(tmp_path):
    """A start acknowledged but not yet visible to weave's server (asynchronous inserts):
    its end is answered 404 "no start found" and sent again until it is taken -- not
    dead-lettered, and not taken for a server without calls/complete (before: the sender
    switched every call to upsert batches)."""
    calls = 20
    with FaultServer(end_needs_start=True, start_visible_after_s=0.5) as server, \
            make_engine(server.url, tmp_path, eager_start_ms=50) as eng:
        tracer = eng.producer()
        trace_calls(tracer, 1)  # the sender up and going
        assert eng.flush(timeout_s=30)
        ids = asyncio.run(_open_then_end(tracer, calls, while_open=lambda: time.sleep(0.3)))
        assert eng.flush(timeout_s=30)
        stats = eng.stats()
    assert [r for r in server.requests if r.status == 404]  # the case under test happened
    assert all(server.is_complete(PROJECT, i) for i in ids)
    assert stats["dead_letters"] == 0 and stats["retries"] > 0
    assert not server.records("/call/upsert_batch")


def test_single_requests_go_several_to_an_in_flight_slot(tmp_path):
    """Starts gone alone and their ends toward a server without upsert batches (weave's)
    are v2 requests of one call each (~1 KB): SINGLES_PER_SLOT of them share one slot of
    max_in_flight, so a server 50 ms away gets more than max_in_flight at once, and never
    more than that many times it (before: max_in_flight, the round trip their wall)."""
    from engine.sender._delivery import SINGLES_PER_SLOT

    calls, max_in_flight = 200, 4
    with FaultServer(stall_s=0.05) as server, \
            make_engine(server.url, tmp_path, eager_start_ms=50, max_in_flight=max_in_flight,
                        initial_in_flight=max_in_flight) as eng:  # fmt: skip
        tracer = eng.producer()
        trace_calls(tracer, 1)  # the sender up and going
        assert eng.flush(timeout_s=30)
        ids = asyncio.run(_open_then_end(tracer, calls, while_open=lambda: time.sleep(0.5)))
        assert eng.flush(timeout_s=60)
        assert eng.stats()["eager_starts"] == calls
    assert all(server.is_complete(PROJECT, i) for i in ids)
    assert max_in_flight < server.peak_stalled <= max_in_flight * SINGLES_PER_SLOT
