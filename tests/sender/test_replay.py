"""Replaying dead letters toward weave's server (engine/sender/_replay.py): it answers a v2
call/end whose start it has not stored 404 "no start found", so every v2 call/start letter
goes before the call/end letters, whatever their order in the file."""

import asyncio
import json
import urllib.request
from collections import Counter

from engine.sender import _replay as replay_module
from engine.sender import _resend as resend_module
from engine.sender._deadletter import DeadLetters, read_dead_letters
from engine.sender._replay import replay
from tests.faultserver import FaultServer

PROJECT = "test-entity/test-project"
_ROUTE = f"/v2/{PROJECT}"


def _start(call_id: str) -> bytes:
    return json.dumps({"start": {
        "project_id": PROJECT, "id": call_id, "trace_id": "t" + call_id, "op_name": "op",
        "started_at": "2026-12-07T06:00:00Z", "attributes": {}, "inputs": {}}}).encode()


def _end(call_id: str) -> bytes:
    return json.dumps({"end": {"project_id": PROJECT, "id": call_id,
                               "ended_at": "2026-12-07T06:00:01Z", "output": 1,
                               "summary": {}}}).encode()


def _post(url: str, route: str, body: bytes) -> None:
    request = urllib.request.Request(url + route, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200


def test_an_end_lettered_before_a_start_does_not_take_every_end_ahead_of_the_starts(tmp_path):
    """The end of call "a" (its start delivered) was dead-lettered first, then call "b"'s
    start and end (``start_not_delivered``). Before: one run per route in the order of each
    route's first letter, so "b"'s end went before its start and was refused again (404)."""
    path = tmp_path / "dead_letters.jsonl"
    with FaultServer(end_needs_start=True) as server:
        _post(server.url, f"{_ROUTE}/call/start", _start("a"))
        with DeadLetters(path) as dead:
            dead.add_batch(reason="deadline", status=503, route=f"{_ROUTE}/call/end",
                           items=[("a", PROJECT, _end("a"))])
            dead.add_batch(reason="deadline", status=503, route=f"{_ROUTE}/call/start",
                           items=[("b", PROJECT, _start("b"))])
            dead.add_batch(reason="start_not_delivered", status=None,
                           route=f"{_ROUTE}/call/end", items=[("b", PROJECT, _end("b"))])
        summary = asyncio.run(replay(server.url, None, str(path)))
        refused = [r.outcome for r in server.requests if r.status == 404]
        assert summary.complete and not refused, refused
        assert server.is_complete(PROJECT, "a") and server.is_complete(PROJECT, "b")


def test_an_end_whose_start_does_not_show_yet_is_sent_again_until_it_does(tmp_path):
    """An end dead-lettered whose start was stored a moment before the replay, toward a
    server whose starts show 0.5 s after it stored them (weave's asynchronous inserts): the
    end, answered 404 "no start found" at first, is sent again until it is taken. Before:
    refused again at once, written back to the dead letters (tests/engine/test_chaos.py,
    seed 91: a start and its end replayed one after the other; the replay now joins those
    into one complete call, test below)."""
    path = tmp_path / "dead_letters.jsonl"
    with FaultServer(end_needs_start=True, start_visible_after_s=0.5) as server:
        _post(server.url, f"{_ROUTE}/call/start", _start("b"))
        with DeadLetters(path) as dead:
            dead.add_batch(reason="deadline", status=503, route=f"{_ROUTE}/call/end",
                           items=[("b", PROJECT, _end("b"))])
        summary = asyncio.run(replay(server.url, None, str(path)))
        assert [r.outcome for r in server.requests if r.status == 404]  # the case ran
        assert summary.complete and server.is_complete(PROJECT, "b")


def test_ends_whose_starts_never_come_wait_once_not_each_in_turn(tmp_path, monkeypatch):
    """Ends whose starts the server never got (refused for good, or sent to another server)
    beside one whose start shows 0.5 s after it was stored: the first end waits for its start
    until ``NO_START_WAIT_S`` after the last request that could hold one was acknowledged,
    the others are refused at their first 404 (kept in the dead letters, with the server's
    reason), and the end whose start shows is delivered. Before: each waited the whole wait
    in turn, sent again and again (1,000 such ends, 10,000 s; here 73 s, the 10 s default)."""
    monkeypatch.setattr(resend_module, "NO_START_WAIT_S", 1.0)
    path = tmp_path / "dead_letters.jsonl"
    lost = [f"x{n}" for n in range(6)]
    with FaultServer(end_needs_start=True, start_visible_after_s=0.5) as server:
        _post(server.url, f"{_ROUTE}/call/start", _start("b"))
        with DeadLetters(path) as dead:
            dead.add_batch(reason="deadline", status=503, route=f"{_ROUTE}/call/end",
                           items=[(i, PROJECT, _end(i)) for i in [*lost, "b"]])
        summary = asyncio.run(replay(server.url, None, str(path)))
        tries = Counter(i for r in server.records("/call/end") for i in r.call_ids)
        assert tries[lost[0]] > 1 and [tries[i] for i in lost[1:]] == [1] * 5, tries
        assert server.is_complete(PROJECT, "b")
        kept = read_dead_letters(path)
        assert sorted(letter.call_id for letter in kept) == lost
        assert all(letter.status == 404 and "no start found" in letter.reason for letter in kept)
        assert not summary.complete and summary.items_delivered == 1


def _upsert(mode: str, body: bytes) -> bytes:
    return b'{"mode":"%s","req":%s}' % (mode.encode(), body)


def test_upsert_letters_go_as_v2_requests_to_a_server_without_the_upsert_route(tmp_path):
    """An upsert batch of a start and an end dead-lettered (an upsert probe past its
    deadline), replayed toward a server that answers /call/upsert_batch 404: its items go
    as v2 call/start and call/end requests, as the live sender sends them. Before: the 404
    was taken for a refusal of the items, kept in the dead letters (the chaos test, seed
    456)."""
    path = tmp_path / "dead_letters.jsonl"
    with FaultServer(upsert_route=False, end_needs_start=True) as server:
        with DeadLetters(path) as dead:
            dead.add_batch(reason="deadline", status=503, route="/call/upsert_batch", items=[
                ("c", PROJECT, _upsert("start", _start("c"))),
                ("c", PROJECT, _upsert("end", _end("c")))])
        summary = asyncio.run(replay(server.url, None, str(path)))
        assert [r.status for r in server.records("/call/upsert_batch")] == [404]
        assert summary.complete and server.is_complete(PROJECT, "c")


def test_a_start_and_its_end_lettered_apart_go_as_one_complete_call_or_stay_as_two(tmp_path):
    """A v2 start and its end in one dead-letter file are sent joined, as one complete call
    (no end can meet a start not shown yet); while the server is down they stay in the file
    as the two letters they were, for the next replay."""
    path = tmp_path / "dead_letters.jsonl"
    other = "test-entity/other"
    whole = json.dumps({**json.loads(_start("a"))["start"], **json.loads(_end("a"))["end"],
                        "project_id": other}).encode()
    with FaultServer(end_needs_start=True, start_visible_after_s=0.5) as server:
        with DeadLetters(path) as dead:  # another project's complete call goes first
            dead.add_batch(reason="deadline", status=503, route=f"/v2/{other}/calls/complete",
                           items=[("a", other, whole)])
            dead.add_batch(reason="deadline", status=503, route=f"{_ROUTE}/call/start",
                           items=[("b", PROJECT, _start("b"))])
            dead.add_batch(reason="start_not_delivered", status=None,
                           route=f"{_ROUTE}/call/end", items=[("b", PROJECT, _end("b"))])
        before = path.read_bytes()
        server.down()
        summary = asyncio.run(replay(server.url, None, str(path)))
        assert not summary.complete and summary.items_kept == 2
        assert [json.loads(line)["route"] for line in path.read_bytes().splitlines()] == [
            f"/v2/{other}/calls/complete", f"{_ROUTE}/call/start", f"{_ROUTE}/call/end"]
        assert [json.loads(line)["item"] for line in path.read_bytes().splitlines()] == [
            json.loads(line)["item"] for line in before.splitlines()]
        server.up()
        summary = asyncio.run(replay(server.url, None, str(path)))
        routes = [r.path for r in server.requests if r.method == "POST"]
        assert summary.complete and summary.calls_joined == 1 and not path.exists()
        assert routes == [f"/v2/{other}/calls/complete", f"{_ROUTE}/calls/complete"], routes
        assert server.is_complete(PROJECT, "b")


def _complete(call_id: str) -> bytes:
    return json.dumps({"project_id": PROJECT, "id": call_id, "trace_id": "t" + call_id,
                       "op_name": "op", "started_at": "2026-12-07T06:00:00Z",
                       "ended_at": "2026-12-07T06:00:01Z", "attributes": {}, "inputs": {},
                       "summary": {}, "output": "x" * 200}).encode()


def _lettered(path, ids: list[str]) -> None:
    with DeadLetters(path) as dead:
        for call_id in ids:
            dead.add_batch(reason="outage: x", status=None, route=f"{_ROUTE}/calls/complete",
                           items=[(call_id, PROJECT, _complete(call_id))])


def test_a_file_larger_than_a_window_goes_window_by_window_and_pairs_across_them(
        tmp_path, monkeypatch):
    """A replay read the whole file and held every letter at once (1.06 GB of memory for
    445 MB of letters). Now it reads ``_WINDOW_BYTES`` of items at a time (here ~8 letters):
    every letter is delivered, a v2 start and its end lettered windows apart are still
    joined into one call, and letters refused again are written back with their reason."""
    monkeypatch.setattr(replay_module, "_WINDOW_BYTES", 3000)
    path = tmp_path / "dead_letters.jsonl"
    ids = [f"c{i:03d}" for i in range(100)]
    with DeadLetters(path) as dead:
        dead.add_batch(reason="deadline", status=503, route=f"{_ROUTE}/call/start",
                       items=[("far", PROJECT, _start("far"))])
    _lettered(path, ids)
    with DeadLetters(path) as dead:
        dead.add_batch(reason="start_not_delivered", status=None, route=f"{_ROUTE}/call/end",
                       items=[("far", PROJECT, _end("far"))])
    refused = {"c010", "c055", "c099"}
    with FaultServer(end_needs_start=True, reject_ids=refused) as server:
        summary = asyncio.run(replay(server.url, None, str(path)))
        assert server.stored_ids(PROJECT) == set(ids) - refused | {"far"}
        assert server.is_complete(PROJECT, "far") and summary.calls_joined == 1
        singles = [r for r in server.requests if "/call/" in r.path]
        assert not singles, [r.path for r in singles]  # joined: no v2 start or end alone
        posts = [r for r in server.requests if r.method == "POST"]
        assert len(posts) >= 10  # window by window (one request held them all before)
    back = list(read_dead_letters(path))
    assert sorted(letter.call_id for letter in back) == sorted(refused)
    assert all(letter.reason.startswith("invalid: replay:") for letter in back), back[0].reason
    assert summary.items_delivered == 98 and summary.items_rejected == 3


def test_a_replay_that_stops_mid_file_writes_back_the_rest_once_unread(tmp_path, monkeypatch):
    """The server stops answering at c040's window: what was delivered is gone from the
    file, what the window held is written back, and the rest of the file is copied back as
    it was (not read into memory): each letter not delivered is in the file once."""
    monkeypatch.setattr(replay_module, "_WINDOW_BYTES", 3000)
    path = tmp_path / "dead_letters.jsonl"
    ids = [f"c{i:03d}" for i in range(100)]
    _lettered(path, ids)
    with open(path, "ab") as file:  # a torn line a crashed writer left, far in the tail
        file.write(b'{"ts":"2026-12-07T06:00:00Z","reason":"torn-here","sta\n')
    _lettered(path, ["z001"])
    with FaultServer(reject_ids={"c040"}, reject_status=503) as server:
        summary = asyncio.run(replay(server.url, None, str(path)))
        delivered = server.stored_ids(PROJECT)
    back = [letter.call_id for letter in read_dead_letters(path, lambda _n, _line: None)]
    assert len(delivered) >= 20 and all(call_id < "c040" for call_id in delivered)
    assert len(back) == len(set(back))  # none twice
    assert set(back) | delivered == set(ids) | {"z001"} and not set(back) & delivered
    assert not summary.complete and summary.items_kept == len(back) + 1  # the torn line too
    torn = [line for line in path.read_bytes().split(b"\n") if b"torn-here" in line]
    assert len(torn) == 1  # copied as it was: the next replay sets it aside
