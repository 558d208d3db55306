"""Durable delivery: batches past their deadline are spooled and replayed, even by a new engine."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import threading
import time

import pytest

from engine.common._errors import ConfigError
from engine.sender._deadletter import read_dead_letters
from engine.sender._spool import Spool
from tests.engine.helpers import PROJECT, make_engine, trace_calls
from tests.faultserver import FaultServer
from tests.pipeline import bare_env, poll_until

pytestmark = pytest.mark.integration


def test_batches_past_their_deadline_are_spooled_and_replayed_when_the_server_returns(tmp_path):
    spool_dir = tmp_path / "spool"
    with FaultServer() as server, make_engine(server.url, tmp_path, spool_dir=str(spool_dir),
                                              delivery_deadline_s=0.3) as eng:
        server.down()
        ids = trace_calls(eng.producer(), 40)
        assert not eng.flush(timeout_s=30)  # spooled is not delivered
        assert eng.stats()["spooled_items"] > 0
        assert eng.flush(timeout_s=30)  # released once spooled: the ring is free again
        assert Spool(spool_dir).count_pending > 0
        server.up()
        assert server.wait_for(lambda: server.stored_ids(PROJECT) == set(ids), timeout_s=30)
        # the server may hold the last segment's calls before the sender reads its answer
        # and deletes the segment (closing then keeps it, to be sent again: seen under load)
        assert poll_until(lambda: Spool(spool_dir).count_pending == 0, timeout_s=30)
    assert Spool(spool_dir).count_pending == 0


def test_what_a_run_spooled_goes_at_its_close_when_the_server_answers_again(tmp_path):
    """The server back just before the program ends: close() sends what this engine
    spooled (within shutdown_timeout_s) rather than leave it to the next engine toward that
    server. Before, the replay sent the spool once a second, and a close between two runs
    left it on disk (bench.guarantees' spool-bound row: 436 of 19,998 calls)."""
    spool_dir = tmp_path / "spool"
    with FaultServer() as server:
        with make_engine(server.url, tmp_path, spool_dir=str(spool_dir),
                         delivery_deadline_s=0.3, shutdown_timeout_s=10) as eng:
            server.down()
            ids = trace_calls(eng.producer(), 200)
            assert not eng.flush(timeout_s=30)  # spooled, not delivered
            assert Spool(spool_dir).count_pending > 0
            server.up()
            stats = eng.close()
        assert Spool(spool_dir).count_pending == 0
        assert server.stored_ids(PROJECT) == set(ids)
        assert stats["spool_replayed_items"] == stats["spooled_items"] > 0, stats


def test_the_senders_spool_replay_counts_what_it_delivered_and_refused_once(tmp_path, capfd):
    """An item the sender's own spool replay sees refused goes to the dead letters, counted
    in ``dead_letters`` (the file holds it) besides ``spooled_items``: nothing said that it
    was one item, so the stats added up to more items than the rings held, and the exit
    line said the spool held what the replay had delivered. Now the replay's work has
    counters of its own, and the exit line counts such an item once and says what the
    replay delivered."""
    spool_dir = tmp_path / "spool"
    with FaultServer() as server:
        with make_engine(server.url, tmp_path, spool_dir=str(spool_dir), delivery_deadline_s=0.3,
                         shutdown_timeout_s=5) as eng:
            server.down()
            ids = trace_calls(eng.producer(), 20)
            assert not eng.flush(timeout_s=30)
            refused = ids[0]
            server.reject_ids = frozenset({refused})
            server.up()
            assert server.wait_for(lambda: server.stored_ids(PROJECT) == set(ids) - {refused},
                                   timeout_s=30)
            assert poll_until(lambda: Spool(spool_dir).count_pending == 0, timeout_s=30)
            assert poll_until(lambda: eng.stats()["spool_refused_items"] == 1, timeout_s=10)
            stats = eng.stats()
        assert stats["spooled_items"] == len(ids) and stats["items_acked"] == 0
        assert stats["dead_letters"] == 1  # as the file holds it, and by its reason
        assert sum(stats[f"dead_{why}"] for why in ("http", "invalid", "too_large")) == 1
        assert stats["spool_replayed_items"] == len(ids) - 1
        assert (stats["items_acked"] + stats["dead_letters"] - stats["spool_refused_items"]
                + stats["spooled_items"]) == len(ids)
        assert [letter.call_id for letter in read_dead_letters(tmp_path / "dead_letters.jsonl")] \
            == [refused]
        log = capfd.readouterr().err
        assert (f"{len(ids)} persisted (1 in the dead letters {tmp_path / 'dead_letters.jsonl'} "
                "(1 of them from the spool, refused when its replay sent them)") in log, log[-2000:]
        assert f"its spool replay delivered {len(ids) - 1} spooled items" in log


def test_a_new_engine_replays_what_an_earlier_one_spooled(tmp_path):
    spool_dir = tmp_path / "spool"
    with FaultServer() as server:
        server.down()
        with make_engine(server.url, tmp_path, spool_dir=str(spool_dir), delivery_deadline_s=0.3,
                         shutdown_timeout_s=2) as eng:
            ids = trace_calls(eng.producer(), 30)
            eng.flush(timeout_s=30)
        assert Spool(spool_dir).count_pending > 0
        assert not server.stored_ids(PROJECT)
        server.up()
        with make_engine(server.url, tmp_path, spool_dir=str(spool_dir)):
            assert server.wait_for(lambda: server.stored_ids(PROJECT) == set(ids), timeout_s=30)


def test_the_spool_replay_compresses_as_the_live_path_does(tmp_path):
    """A sender that compresses (zstd, the server takes it) replays its spool in zstd bodies
    too: the replay after an outage is when there is most to send, and it went plain
    (several times the bytes across the link)."""
    spool_dir = tmp_path / "spool"
    with FaultServer() as server:
        server.down()
        with make_engine(server.url, tmp_path, spool_dir=str(spool_dir), delivery_deadline_s=0.3,
                         shutdown_timeout_s=2, compression="zstd") as eng:
            ids = trace_calls(eng.producer(), 30, payload_bytes=2000)
            eng.flush(timeout_s=30)
        assert Spool(spool_dir).count_pending > 0
        server.up()
        with make_engine(server.url, tmp_path, spool_dir=str(spool_dir), compression="zstd"):
            assert server.wait_for(lambda: server.stored_ids(PROJECT) == set(ids), timeout_s=30)
        posts = [r for r in server.requests if r.method == "POST" and r.status == 200]
        assert posts and all(r.headers.get("Content-Encoding") == "zstd" for r in posts), [
            (r.path, r.headers.get("Content-Encoding")) for r in posts]


def test_a_spool_dir_that_cannot_be_made_is_refused_at_start(tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError, match=r"spool_dir: .*a-file/spool: Not a directory"):
        make_engine("http://127.0.0.1:9", tmp_path, spool_dir=str(tmp_path / "a-file/spool"))


def test_a_sender_that_cannot_open_its_spool_delivers_and_dead_letters_instead(tmp_path):
    """A restarted (or recovering) sender whose spool_dir became unusable once crashed on
    it, was restarted, crashed again: nothing delivered, for ever."""
    spool_dir = tmp_path / "spool"
    with FaultServer() as server, make_engine(server.url, tmp_path, spool_dir=str(spool_dir),
                                              delivery_deadline_s=0.3) as eng:
        tracer = eng.producer()
        ids = trace_calls(tracer, 20)
        assert eng.flush(timeout_s=30)
        shutil.rmtree(spool_dir)
        spool_dir.write_text("in the way")
        eng._sender.kill()
        ids += trace_calls(tracer, 20)
        assert eng.flush(timeout_s=60)
        assert server.stored_ids(PROJECT) == set(ids)
        server.down()
        down_ids = trace_calls(tracer, 5)
        assert not eng.flush(timeout_s=30)
        stats = eng.stats()
        # each of the 10 calls dead-lettered: as one complete item, or as its start (sent
        # ahead while its end was pending) and its end -- which, depends on timing
        letters = list(read_dead_letters(tmp_path / "dead_letters.jsonl"))
        assert sorted({letter.call_id for letter in letters}) == sorted(down_ids)
        assert stats["dead_letters"] == len(letters) and stats["spooled_items"] == 0
        assert stats["sender_restarts"] == 1



def test_a_down_server_does_not_stall_the_program_what_fails_goes_to_disk_once_it_waits(
        tmp_path, capfd):
    """The server down and the ring full: the program waited for each batch's
    ``delivery_deadline_s`` (here 60 s) before its ring had room again. Now, the server
    failing for SPILL_AFTER_S (5 s) while a producer waits for room, what fails goes to the
    dead letters at once: 3,000 calls through a 1 MiB ring end within seconds, every one in
    the dead letters, and a replay delivers them."""
    dead = tmp_path / "dead_letters.jsonl"
    with FaultServer() as server:
        server.down()
        with make_engine(server.url, tmp_path, delivery_deadline_s=60.0, shutdown_timeout_s=2.0,
                         backoff_max_ms=500, spool_dir="off") as eng:
            started = time.monotonic()
            ids = trace_calls(eng.producer(), 1500, payload_bytes=2000)
            took_s = time.monotonic() - started
            eng.close()
            stats = eng.stats()
        assert took_s < 25, took_s  # before: the first batches' 60 s deadline, then more
        assert stats["ring"]["full_waits"] > 0  # the producer did wait for room
        assert stats["dead_deadline"] == stats["dead_letters"] > 0 and stats["undelivered"] == 0
        letters = list(read_dead_letters(dead))
        assert {letter.call_id for letter in letters} == set(ids)
        assert any("producers waited for ring space" in letter.reason for letter in letters)
        log = capfd.readouterr().err  # the sender's lines: why the program goes on
        assert f"what is not delivered goes to the dead letters {dead} at once" in log, log[-3000:]
        server.up()
        replayed = subprocess.run([sys.executable, "-m", "engine", "replay", "--to", server.url,
                                   "--dead-letters", str(dead)], capture_output=True, text=True,
                                  timeout=120, env=bare_env())
        assert replayed.returncode == 0, replayed.stderr[-3000:]
        assert server.stored_ids(PROJECT) == set(ids)
        assert all(server.is_complete(PROJECT, call_id) for call_id in ids)


def test_a_server_that_answers_nothing_does_not_stall_the_program_past_its_silence(
        tmp_path, capfd):
    """A frozen server (it takes connections and requests, and answers none) failed nothing
    until ``request_timeout_s`` (60 s): the producers waited that long for ring space before
    the spill began (a run of 3,000 calls through a 1 MiB ring took 65 s). Now a server that
    has answered nothing for ``silent_after_s`` (15 s; 5 here) with requests in flight counts
    as failing: one warning says so, and what waits goes to disk as in an outage, the
    requests unanswered taken back; every call arrives by a replay once it answers again.
    (At the default 15 s, 3,000 calls: 305 s before, 21 s now.)"""
    dead = tmp_path / "dead_letters.jsonl"
    with FaultServer(stall_s=3600.0) as server:
        with make_engine(server.url, tmp_path, delivery_deadline_s=120.0, request_timeout_s=60.0,
                         silent_after_s=5.0, shutdown_timeout_s=2.0, backoff_max_ms=500,
                         spool_dir="off") as eng:
            started = time.monotonic()
            ids = trace_calls(eng.producer(), 1500, payload_bytes=2000)
            took_s = time.monotonic() - started
            eng.close()
            stats = eng.stats()
        assert server.peak_stalled > 0  # requests did reach it and were held
        assert took_s < 25, took_s  # before: 305 s (request_timeout_s, each retry as long)
        assert stats["ring"]["full_waits"] > 0
        assert stats["dead_letters"] > 0 and stats["undelivered"] == 0
        log = capfd.readouterr().err
        assert "has answered nothing since" in log, log[-3000:]
        server.stall_s = 0.0
        replayed = subprocess.run([sys.executable, "-m", "engine", "replay", "--to", server.url,
                                   "--dead-letters", str(dead)], capture_output=True, text=True,
                                  timeout=120, env=bare_env())
        assert replayed.returncode == 0, replayed.stderr[-3000:]
        assert server.wait_for(lambda: server.stored_ids(PROJECT) >= set(ids), 30)
        assert all(server.is_complete(PROJECT, call_id) for call_id in ids)


def test_a_silent_server_is_probed_with_a_copy_and_its_first_answer_ends_the_spill(
        tmp_path, capfd):
    """While the server is silent and producers wait, no batch is sent (a request pinned its
    ring's oldest records until taken back, 2 s later: the ring freed about half of itself
    per 2 s); one copy of a batch already on disk probes it. Once the server answers again,
    the probe's answer ends the silence and the spill: the calls made after it are
    delivered live, the ones before are in the dead letters (a replay sends them; the
    probe's copy is absorbed)."""
    dead = tmp_path / "dead_letters.jsonl"
    with FaultServer(stall_s=3600.0) as server:
        with make_engine(server.url, tmp_path, delivery_deadline_s=120.0, silent_after_s=2.0,
                         shutdown_timeout_s=5.0, backoff_max_ms=500, spool_dir="off") as eng:
            tracer = eng.producer()
            ids = trace_calls(tracer, 1000, payload_bytes=2000)  # past the ring: it spills
            assert eng.stats()["dead_letters"] > 0
            server.stall_s = 0.0
            server.release()
            # the probe's answer ends the silence (no request is in flight meanwhile: the
            # sooner check, that none was, passed before the probe was answered on a loaded
            # box, and the later calls spilled)
            err = []
            assert poll_until(lambda: "answering again" in "".join(
                err.append(capfd.readouterr().err) or err), timeout_s=30), "".join(err)[-3000:]
            later = trace_calls(tracer, 200, prefix="later")
            assert eng.flush(timeout_s=60) is False  # what went to disk is not delivered
            eng.close()
            stats = eng.stats()
        assert set(later) <= server.stored_ids(PROJECT)  # delivered live, not spilled
        assert stats["undelivered"] == 0
        replayed = subprocess.run([sys.executable, "-m", "engine", "replay", "--to", server.url,
                                   "--dead-letters", str(dead)], capture_output=True, text=True,
                                  timeout=120, env=bare_env())
        assert replayed.returncode == 0, replayed.stderr[-3000:]
        assert server.stored_ids(PROJECT) >= set(ids) | set(later)
        assert all(server.is_complete(PROJECT, call_id) for call_id in ids + later)


def test_a_server_that_answers_429_keeps_the_program_waiting_and_loses_nothing(tmp_path):
    """429 is the server up and asking for less: the producers' wait is the backpressure it
    wants, so nothing goes to disk early; once it takes calls again every one arrives."""
    with FaultServer(p_429=1.0, retry_after="0") as server:
        with make_engine(server.url, tmp_path, delivery_deadline_s=60.0,
                         backoff_max_ms=200) as eng:
            done = threading.Event()
            ids: list[str] = []
            worker = threading.Thread(target=lambda: (ids.extend(trace_calls(
                eng.producer(), 1500, payload_bytes=2000)), done.set()))
            worker.start()
            try:
                assert not done.wait(7.0)  # past SPILL_AFTER_S: still waiting for room
                stats = eng.stats()
                assert stats["ring"]["full_waits"] > 0 and stats["dead_letters"] == 0
            finally:
                server.p_429 = 0.0
                worker.join(timeout=60)
            assert done.is_set()
            assert eng.flush(timeout_s=60)
            assert eng.stats()["dead_letters"] == 0
        assert server.stored_ids(PROJECT) == set(ids)


def test_the_spool_replay_joins_the_start_and_end_of_a_call_spooled_apart(tmp_path):
    """Toward weave's server (calls_complete; an end refused 404 until its start shows), the
    starts of open calls go alone as v2 requests, and with the server down each start and
    each end became a spool segment of its own. Sent again one request each (the end only
    once weave showed its start): 3,305 segments took 87 s toward a server 20 ms away. Now
    the replay joins a start and its end (named in the segments' meta) into one complete
    call, batched."""
    spool_dir = tmp_path / "spool"
    with FaultServer(weave_residence=True, end_needs_start=True,
                     start_visible_after_s=0.2) as server:
        server.down()
        with make_engine(server.url, tmp_path, spool_dir=str(spool_dir), delivery_deadline_s=0.3,
                         eager_start_ms=50, shutdown_timeout_s=2.0) as eng:
            made = asyncio.run(_calls_held_open(
                eng.producer(), 200, lambda: eng.stats()["eager_starts"] >= 200))
        pending = Spool(spool_dir).pending()
        singles = [entry for entry in pending if "/call/" in entry.route]
        assert len(singles) >= 100, [entry.route for entry in pending][:5]
        server.up()
        replayed = subprocess.run([sys.executable, "-m", "engine", "replay", "--to", server.url,
                                   "--spool", str(spool_dir)], capture_output=True, text=True,
                                  timeout=120, env=bare_env(
                                      XDG_STATE_HOME=str(tmp_path / "state")))
        stored = server.snapshot()
        requests = len(server.records())
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr[-3000:]
    assert "joined into one complete call" in replayed.stdout, replayed.stdout
    assert len(stored) == made and Spool(spool_dir).count_pending == 0
    assert all("started_at" in call and "ended_at" in call for call in stored.values())
    assert requests < len(singles) // 4, (requests, len(singles))


async def _calls_held_open(tracer, calls: int, gone_alone) -> int:
    """``calls`` async op calls open at once until ``gone_alone()`` (their starts went alone,
    past eager_start_ms; at most 30 s), then ended. A fixed wait (0.5 s) was not always
    enough on a loaded box (the sender read the starts after their ends: none went alone)."""
    gate = asyncio.Event()

    @tracer.op
    async def predict(example: int) -> int:
        await gate.wait()
        return example

    tasks = [asyncio.create_task(predict(i)) for i in range(calls)]
    deadline = time.monotonic() + 30
    while not gone_alone() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    gate.set()
    await asyncio.gather(*tasks)
    return calls
