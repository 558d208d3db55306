"""Signals never cost a call: the ways an eval run really ends (Ctrl-C, ``timeout``, a job
scheduler, ``kill``), with the server up and down, to the whole process group and to the
owner alone. Real processes, real signals, a real loopback server; exact counts."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import pytest

from engine.ring import _files as ring_files
from tests.faultserver import FaultServer
from tests.pipeline import Pipeline, Sandbox, account, bare_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_SETTINGS = {"shutdown_timeout_s": 3.0, "ring_bytes": 1 << 20, "max_slots": 8}
_EXIT_LINE = re.compile(r"engine: .* delivered")


def _signalled_run(tmp_path, server: FaultServer, sig: int, *, group: bool = True,
                   pace_s: float = 0.0, calls: int = 0, min_calls: int = 2000) -> Pipeline:
    """A pipeline that traces until ``sig`` reaches its group (or its owner alone)."""
    run = Pipeline(Sandbox(tmp_path), server.url, producers=2, calls=calls, pace_s=pace_s,
                   settings=dict(_SETTINGS)).start()
    try:
        run.wait_calls(min_calls)
        if group:
            run.killpg(sig)
        else:
            os.kill(run.info["owner"], sig)
        run.wait(timeout_s=30)
        run.wait_sender_gone(timeout_s=30)  # no orphan: it settled and left
    finally:
        run.stop()
    return run


def _exit_lines(run: Pipeline) -> list[str]:
    return [line for line in run.log().splitlines() if _EXIT_LINE.search(line)]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_the_whole_group_delivers_every_call_that_returned(tmp_path, sig):
    with FaultServer() as server:
        run = _signalled_run(tmp_path, server, sig)
        stored = server.snapshot()
        duplicates = server.duplicate_deliveries()
    result = account(run.produced(), stored)
    assert result.produced >= 2000
    assert (result.delivered, result.lost) == (result.produced, 0), result.lost_ids[:5]
    assert duplicates == 0
    assert "restarting" not in run.log()
    assert len(_exit_lines(run)) == 1, run.log()[-3000:]
    assert not run.sandbox.dead_letter_path.exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_group_signal_with_the_server_down_persists_every_call_and_replay_delivers_them(
        tmp_path, sig):
    with FaultServer() as server:
        server.down()
        run = _signalled_run(tmp_path, server, sig)
        assert not server.snapshot()
        # the default spool of that server (tests/engine/test_default_spool.py)
        spools = run.sandbox.spool_dirs()
        before = account(run.produced(), {}, [run.sandbox.dead_letter_path], spools)
        assert (before.persisted, before.lost) == (before.produced, 0), before.lost_ids[:5]
        lines = _exit_lines(run)
        assert len(lines) == 1 and f"in the spool {spools[0]}" in lines[0], run.log()[-3000:]
        server.up()
        replayed = run.sandbox.replay(server.url)  # finds that server's default spool
        assert replayed.returncode == 0, replayed.stderr
        after = account(run.produced(), server.snapshot(), [run.sandbox.dead_letter_path], spools)
        duplicates = server.duplicate_deliveries()
    assert (after.delivered, after.lost) == (after.produced, 0)
    assert duplicates == 0
    assert not run.sandbox.dead_letter_path.exists()
    assert not [seg for spool in spools for seg in spool.glob("*.seg")]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_the_owner_alone_delivers_what_its_producers_write_after_it(tmp_path, sig):
    """The producers outlive the owner by a moment (they finish their calls): the sender
    serves them until they are done, within shutdown_timeout_s, then exits."""
    with FaultServer() as server:
        run = _signalled_run(tmp_path, server, sig, group=False, calls=300, pace_s=0.002,
                             min_calls=100)
        stored = server.snapshot()
    result = account(run.produced(), stored)
    per_process = sorted(run.produced_per_process().values())
    assert per_process[0] < 300 and per_process[1:] == [300, 300]  # only the owner stopped
    assert (result.delivered, result.lost) == (result.produced, 0), result.lost_ids[:5]
    assert "restarting" not in run.log()
    assert len(_exit_lines(run)) == 1, run.log()[-3000:]
    assert not os.path.exists(ring_files.segment_path(run.info["ring"]))


def test_sigterm_with_the_server_down_takes_sigterm_timeout_s_and_persists_every_call(tmp_path):
    """What follows SIGTERM is SIGKILL after a grace period (``docker stop``: 10 s;
    Kubernetes, Slurm: 30 s). With the server down, the owner delivered for
    ``shutdown_timeout_s`` (30 s by default) before persisting, so such a SIGKILL came first
    and every call still in the rings died with the container. It now takes
    ``sigterm_timeout_s`` in all (here 2 s), then has persisted everything."""
    settings = {**_SETTINGS, "shutdown_timeout_s": 30.0, "sigterm_timeout_s": 2.0}
    with FaultServer() as server:
        server.down()
        run = Pipeline(Sandbox(tmp_path), server.url, producers=2, settings=settings).start()
        try:
            run.wait_calls(2000)
            run.killpg(signal.SIGTERM)
            started = time.monotonic()
            code = run.wait(timeout_s=25)
            took_s = time.monotonic() - started
            run.wait_sender_gone(timeout_s=30)
        finally:
            run.stop()
        assert not server.snapshot()
    assert code == -signal.SIGTERM and took_s < 8, (code, took_s, run.log()[-3000:])
    result = account(run.produced(), {}, [run.sandbox.dead_letter_path], run.sandbox.spool_dirs())
    assert result.produced >= 2000
    assert (result.persisted, result.lost) == (result.produced, 0), result.lost_ids[:5]


_WAITING_OWNER = textwrap.dedent("""
    import sys, time, engine
    eng = engine.Engine(url=sys.argv[1], project="ops/ctrl-c", dead_letter_path=sys.argv[2],
                        spool_dir="off",
                        backoff_initial_ms=10, backoff_max_ms=100)
    tracer = eng.producer()
    for i in range(500):
        with tracer.call("op", inputs={"i": i}) as call:
            call.output = i
    print("traced", flush=True)
    time.sleep(60)  # Ctrl-C lands here; close() then runs at exit
""")


def test_ctrl_c_while_exit_waits_for_a_down_server_persists_now_and_says_so(tmp_path):
    """Ctrl-C, then the exit waits up to shutdown_timeout_s (30 s) for a server that is
    down: it says so after a second, and a second Ctrl-C persists what is left at once and
    ends the program without a traceback (before: nothing said, and the second Ctrl-C
    printed "Exception ignored in atexit callback" and the exit still took the 30 s)."""
    dead = tmp_path / "dead.jsonl"
    with FaultServer() as server:
        server.down()
        proc = subprocess.Popen([sys.executable, "-c", _WAITING_OWNER, server.url, str(dead)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=bare_env())  # fmt: skip
        try:
            assert proc.stdout.readline() == "traced\n"
            proc.send_signal(signal.SIGINT)
            time.sleep(2.5)  # past the 1 s after which the wait is said
            proc.send_signal(signal.SIGINT)
            started = time.monotonic()
            _, err = proc.communicate(timeout=25)
            took_s = time.monotonic() - started
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == -signal.SIGINT and took_s < 5, (took_s, err[-3000:])
    waiting = next(line for line in err.splitlines() if "for up to" in line)
    assert f"delivering what the rings hold to {server.url} for up to 2" in waiting
    assert f"Ctrl-C stops waiting: they go to the dead letters {dead}" in waiting
    assert "persisting what is not delivered now" in err
    # the program's own KeyboardInterrupt traceback, and no other
    assert "Exception ignored" not in err and err.count("Traceback") == 1, err[-3000:]
    assert len(dead.read_text().splitlines()) == 500  # every call, persisted


_EXIT_IMPORTS_OWNER = textwrap.dedent("""
    import atexit, json, sys, engine
    before = set()
    # registered first, so it runs after the engine's own exit (the close that waits)
    atexit.register(lambda: print(json.dumps(sorted(set(sys.modules) - before)), flush=True))
    eng = engine.Engine(url=sys.argv[1], project="ops/exit-imports", dead_letter_path=sys.argv[2],
                        shutdown_timeout_s=1.5)
    with eng.producer().call("op", inputs={"i": 1}) as call:
        call.output = 1
    before = set(sys.modules)
    raise KeyboardInterrupt  # an uncaught Ctrl-C; the exit then waits for the down server
""")


def test_an_uncaught_ctrl_c_still_exits_by_sigint_when_the_exit_waits(tmp_path):
    """The exit's close, waiting for a down server, says where it delivers: redacting that
    URL imported yarl (and multidict, platform) at exit. Code exec()'d at exit -- platform's
    namedtuple -- clears CPython's mark of an uncaught KeyboardInterrupt, so on Python 3.13
    (whose uuid no longer imports platform first) the program exited 1 instead of by SIGINT
    (130 in a shell, which a shell loop stops on). The engine now imports it when it starts:
    nothing is imported at exit, on any Python."""
    with FaultServer() as server:
        server.down()
        result = subprocess.run(
            [sys.executable, "-c", _EXIT_IMPORTS_OWNER, server.url, str(tmp_path / "dead.jsonl")],
            capture_output=True, text=True, timeout=60,
            env=bare_env())  # fmt: skip
    assert result.stdout.splitlines() == ["[]"], result.stderr[-3000:]
    assert result.returncode == -signal.SIGINT, result.stderr[-3000:]
    assert "for up to" in result.stderr  # the exit did wait, and said so


_BLOCKED_THREADS_OWNER = textwrap.dedent("""
    import sys, threading, time, engine
    eng = engine.Engine(url=sys.argv[1], project="ops/sigterm", dead_letter_path=sys.argv[2],
                        spool_dir="off",
                        ring_bytes=1 << 20, max_block_ms=100, shutdown_timeout_s=30.0,
                        sigterm_timeout_s=float((sys.argv[3:] or ["2.0"])[0]),
                        backoff_initial_ms=10, backoff_max_ms=100)
    tracer = eng.producer()
    finished = []
    big_end = sys.argv[4:] == ["end"]  # the large item: the call's end (else its start)
    def work():
        for i in range(10_000):  # the ring holds ~50 of these: then each thread waits
            with tracer.call("op", inputs={"x": "" if big_end else "x" * 20_000}) as call:
                call.output = "o" * 20_000 if big_end else i
            finished.append(i)
    for _ in range(3):
        threading.Thread(target=work).start()
    while eng.stats()["ring"]["full_waits"] < 3:
        time.sleep(0.05)
    time.sleep(0.3)
    print(len(finished), flush=True)
    time.sleep(60)  # SIGTERM lands here, while the threads wait for room
""")


def test_sigterm_while_threads_wait_for_room_in_a_full_ring_ends_and_persists(tmp_path):
    """The server down, three threads of the program waiting for room in their full ring
    (on_full="block", the default) holding the process's ring lock: SIGTERM's close() waited
    on that lock for ever (the program hung until SIGKILL). Now the waits stop as the engine
    closes (counted dropped_full), and within sigterm_timeout_s the program ends by SIGTERM
    with every call that finished in the dead letters."""
    dead = tmp_path / "dead.jsonl"
    with FaultServer() as server:
        server.down()
        proc = subprocess.Popen([sys.executable, "-c", _BLOCKED_THREADS_OWNER, server.url,
                                 str(dead)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=bare_env())
        try:
            finished = int(proc.stdout.readline())
            proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            _, err = proc.communicate(timeout=30)
            took_s = time.monotonic() - started
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == -signal.SIGTERM and took_s < 8, (took_s, err[-3000:])
    dropped = re.search(r"dropped: (\d+) ring full", err)  # each waiting one, and any that
    assert dropped and int(dropped.group(1)) >= 3, err[-3000:]  # met the full ring after
    ids = {line.split('"call_id":"')[1][:36] for line in dead.read_text().splitlines()}
    assert len(ids) >= finished  # every call that finished, and the waiting ones' starts


# an engine whose 64 KiB ring holds ~5 ends of 12 KB (argv: the server's URL, dead letters)
_SMALL_RING_ENGINE = textwrap.dedent("""
    import sys, threading, time, engine
    eng = engine.Engine(url=sys.argv[1], project="ops/ctrl-c", dead_letter_path=sys.argv[2],
                        spool_dir="off", ring_bytes=1 << 16, max_block_ms=100,
                        shutdown_timeout_s=20.0, compression="none", backoff_initial_ms=10,
                        backoff_max_ms=100)
    tracer = eng.producer()
""")
_END_WAITING_OWNER = _SMALL_RING_ENGINE + textwrap.dedent("""
    print("tracing", flush=True)
    for i in range(1_000_000):  # the ring holds ~5 ends: then an end waits for room
        with tracer.call("op", inputs={"i": i}) as call:
            call.output = "o" * 12_000
""")


def test_ctrl_c_while_a_calls_end_waits_for_room_writes_that_end_at_exit(tmp_path):
    """A server that holds every request: the program's ring fills and a call's end waits
    for room (its start already in the ring) when Ctrl-C lands. The KeyboardInterrupt went
    up through the wait and the end was never written: the call stayed open on the server
    for good. Now the end is kept and written as the engine closes, once its sender made
    room (the server answering again): every call stored has its end."""
    dead = tmp_path / "dead.jsonl"
    _, err, stored = _signalled_as_the_server_thaws(
        signal.SIGINT, _END_WAITING_OWNER, [str(dead)], lambda line: line == "tracing\n")
    assert "KeyboardInterrupt" in err, err[-3000:]
    assert "_write_slow" in err, err[-3000:]  # it landed in a wait for room (an end's: below)
    open_left = [call["id"] for call in stored.values() if "ended_at" not in call]
    assert stored and not open_left, (len(stored), open_left, err[-3000:])
    assert not dead.exists()


_CHILDS_END_WAITING_OWNER = _SMALL_RING_ENGINE + textwrap.dedent("""
    import contextlib, multiprocessing
    def work():
        with contextlib.ExitStack() as calls:  # 40 starts fit; the ends, last first, do not
            for i in range(40):
                call = calls.enter_context(tracer.call("op", inputs={"i": i}))
                call.output = "o" * 12_000
    child = multiprocessing.get_context("fork").Process(target=work)
    child.start()
    print("tracing", child.pid, flush=True)
    child.join()
""")


def test_ctrl_c_in_a_child_while_a_calls_end_waits_for_room_writes_that_end_as_it_exits(
        tmp_path):
    """The same in a process that does not own the engine (a Pool worker, any child): Ctrl-C
    lands while a call's end waits for room; the end is kept, but the owner's close, which
    writes the ends kept, runs in another process: the call stayed open on the server for
    good. Now the child writes it as it exits, once its sender made room."""
    dead = tmp_path / "dead.jsonl"
    returncode, err, stored = _signalled_as_the_server_thaws(
        signal.SIGINT, _CHILDS_END_WAITING_OWNER, [str(dead)],
        lambda line: line.startswith("tracing "), whom=lambda line: int(line.split()[1]))
    assert returncode == 0 and "KeyboardInterrupt" in err, err[-3000:]
    assert "in _write_slow" in err, err[-3000:]  # it landed in an end's wait for room
    open_left = [call["id"] for call in stored.values() if "ended_at" not in call]
    assert len(stored) == 40 and not open_left, (len(stored), open_left, err[-3000:])


_CHILDS_END_UNWRITTEN_OWNER = _SMALL_RING_ENGINE + textwrap.dedent("""
    import json, multiprocessing
    from engine.producer import _slot
    _slot.KEPT_ENDS_AT_EXIT_S = 0.2  # the server answers only later: no room by then
    def work():
        starts = [tracer.call_start({"project_id": "ops/ctrl-c", "op_name": "op",
                                     "started_at": "2026-12-07T10:00:00Z", "attributes": {},
                                     "inputs": {"i": i}}) for i in range(40)]
        for start in starts:  # the ring holds ~5 ends: the sixth waits for room
            tracer.call_end({"project_id": "ops/ctrl-c", "id": start.id, "summary": {},
                             "ended_at": "2026-12-07T10:00:01Z", "output": "o" * 12_000})
    child = multiprocessing.get_context("fork").Process(target=work)
    child.start()
    print("tracing", child.pid, flush=True)
    child.join()
    print(json.dumps(eng.close()["producers"]), file=sys.stderr, flush=True)
""")


def test_a_childs_kept_end_with_no_room_by_its_exit_is_counted_dropped(tmp_path):
    """No room comes within the child's wait at exit: that end is counted ``dropped_full``
    and said; everything else the child wrote is delivered."""
    dead = tmp_path / "dead.jsonl"
    returncode, err, stored = _signalled_as_the_server_thaws(
        signal.SIGINT, _CHILDS_END_UNWRITTEN_OWNER, [str(dead)],
        lambda line: line.startswith("tracing "), thaw_after_s=2.0,
        whom=lambda line: int(line.split()[1]))
    assert returncode == 0 and "1 not (counted dropped_full)" in err, err[-3000:]
    assert json.loads(err.splitlines()[-1])["dropped_full"] == 1, err[-3000:]
    ended = [call for call in stored.values() if "ended_at" in call]
    assert len(stored) == 40 and 0 < len(ended) < 10, (len(stored), len(ended), err[-3000:])


_END_WAITING_FOR_THE_LOCK_OWNER = _SMALL_RING_ENGINE + textwrap.dedent("""
    def fill():
        for i in range(1_000):  # the ring holds ~5 ends: then this thread waits for room,
            with tracer.call("fill", inputs={"i": i}) as call:  # holding the ring lock
                call.output = "o" * 12_000
    with tracer.call("main", inputs={}) as call:  # its start in the ring while there is room
        threading.Thread(target=fill, daemon=True).start()
        while eng.stats()["ring"]["full_waits"] < 1:
            time.sleep(0.01)
        print("waiting", flush=True)
        call.output = "o" * 12_000  # its end meets the full ring: it waits for the lock
""")


def test_ctrl_c_while_a_calls_end_waits_for_another_threads_wait_writes_it_at_exit(tmp_path):
    """A call's end meets the full ring while another thread holds the ring lock as it
    waits for room, and Ctrl-C lands in the wait for the lock: that end was never written
    (the call stayed open on the server). Now it is kept and written as the engine closes,
    with the other thread's (the server thaws once the close has stopped the threads)."""
    dead = tmp_path / "dead.jsonl"
    _, err, stored = _signalled_as_the_server_thaws(
        signal.SIGINT, _END_WAITING_FOR_THE_LOCK_OWNER, [str(dead)],
        lambda line: line == "waiting\n", thaw_after_s=1.0)
    assert "KeyboardInterrupt" in err and "in _settle" in err, err[-3000:]  # the lock's wait
    mains = [call for call in stored.values() if call["op_name"] == "main"]
    open_left = [call["id"] for call in stored.values() if "ended_at" not in call]
    assert len(mains) == 1 and not open_left, (len(stored), open_left, err[-3000:])


def test_sigterm_while_threads_wait_for_room_writes_their_calls_ends(tmp_path):
    """The same three threads waiting for room, toward a server that holds every request
    (not down): their calls' ends (each start already in the ring) were dropped as the close
    stopped their waits, and those calls stayed open on the server for good. Now the close
    writes them once the sender made room (the server answering again)."""
    dead = tmp_path / "dead.jsonl"
    # the server thaws once the close has stopped the threads: a thread that goes on
    # tracing through a close starts calls whose ends come after it (Closed: not written)
    returncode, err, stored = _signalled_as_the_server_thaws(
        signal.SIGTERM, _BLOCKED_THREADS_OWNER, [str(dead), "8.0", "end"],
        lambda line: line.strip().isdigit(), thaw_after_s=1.0)  # it prints once they wait
    assert returncode == -signal.SIGTERM, err[-3000:]
    open_left = [call["id"] for call in stored.values() if "ended_at" not in call]
    assert stored and not open_left, (len(stored), open_left, err[-3000:])


def _signalled_as_the_server_thaws(sig: int, owner: str, args: list[str],
                                   ready: Callable[[str], bool], thaw_after_s: float = 0.0,
                                   whom: Callable[[str], int] | None = None,
                                   ) -> tuple[int, str, dict]:
    """``owner`` toward a server that holds every request, sent ``sig`` once its first line
    says it is ``ready`` (waiting for room in its full ring) and a second more, the server
    answering again ``thaw_after_s`` later: (its exit code, its stderr, what the server
    stored). ``whom``: the pid to signal instead, from that line (a child of the owner's)."""
    with FaultServer(stall_s=3600.0) as server:
        proc = subprocess.Popen([sys.executable, "-c", owner, server.url, *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=bare_env())
        try:
            line = proc.stdout.readline()
            assert ready(line), (line, proc.stderr.read()[-3000:] if not line else "")
            assert server.wait_for(lambda: server.peak_stalled > 0, 30)
            time.sleep(1.0)  # the ring filled long before: it waits for room
            os.kill(whom(line) if whom else proc.pid, sig)
            time.sleep(thaw_after_s)
            server.stall_s = 0.0
            server.release()
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return proc.returncode, err, server.snapshot()


_OPEN_CALLS_OWNER = textwrap.dedent("""
    import asyncio, atexit, json, sys, engine
    from tests.engine.helpers import sliding_open_calls
    # registered first, so it runs after the engine's own exit (the close that delivers)
    atexit.register(lambda: print(json.dumps(eng.stats()), flush=True))
    eng = engine.Engine(url=sys.argv[1], project="ops/open-calls", dead_letter_path=sys.argv[2],
                        spool_dir="off",
                        ring_bytes=1 << 20, compression="none",
                        shutdown_timeout_s=float(sys.argv[3]), backoff_initial_ms=10,
                        backoff_max_ms=100)
    tracer = eng.producer()
    print("tracing", flush=True)
    asyncio.run(sliding_open_calls(tracer, 1_000_000, 1000, for_s=30))
""")


def test_ctrl_c_of_an_asyncio_eval_with_calls_open_toward_weave_s_server_ends_and_delivers_each(
        tmp_path):
    """An asyncio eval awaiting a slow model has a thousand calls open when Ctrl-C reaches
    its process group; the server is weave's as it answers a new project (calls_complete:
    a start held too long goes alone as a v2 request, and an end is refused 404 until its
    start shows). asyncio cancels the open tasks, each op ends its call with the
    cancellation, and the exit delivers every call written, each with its start and its
    end: none lost, none left open, nothing in the dead letters."""
    dead = tmp_path / "dead.jsonl"
    with FaultServer(weave_residence=True, end_needs_start=True, start_visible_after_s=0.2,
                     stall_s=0.02) as server:
        out, err, returncode, _ = _ctrl_c_with_calls_open(server, dead, shutdown_timeout_s=20.0)
        stored = server.snapshot()
    assert returncode == -signal.SIGINT, err[-3000:]
    stats = json.loads(out.splitlines()[-1])
    assert stats["eager_starts"] > 0  # starts went alone before their end (v2 call/start)
    assert stats["ring"]["records_written"] == 2 * len(stored), (len(stored), err[-3000:])
    assert stats["undelivered"] == 0 and stats["dead_letters"] == 0 and not dead.exists()
    open_left = [key for key, call in stored.items() if "ended_at" not in call]
    assert not open_left and all("started_at" in call for call in stored.values())
    cancelled = [call for call in stored.values() if "CancelledError" in str(call.get("exception"))]
    assert len(cancelled) >= 999, len(cancelled)  # the window's calls, ended by the cancellation


def _ctrl_c_with_calls_open(server: FaultServer, dead, *, shutdown_timeout_s: float,
                            after_s: float = 1.5) -> tuple[str, str, int, float]:
    """_OPEN_CALLS_OWNER toward ``server``, its group sent SIGINT ``after_s`` in: (its
    stdout, stderr, exit code, seconds from the signal to its end)."""
    proc = subprocess.Popen([sys.executable, "-c", _OPEN_CALLS_OWNER, server.url, str(dead),
                             str(shutdown_timeout_s)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=bare_env())
    try:
        assert proc.stdout.readline() == "tracing\n", proc.stderr.read()[-3000:]
        time.sleep(after_s)  # a window of 1,000 calls open
        os.killpg(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C: the whole group
        signalled = time.monotonic()
        out, err = proc.communicate(timeout=60)
        return out, err, proc.returncode, time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ctrl_c_of_an_asyncio_eval_with_calls_open_while_the_server_is_down_ends_and_replays(
        tmp_path):
    """The same eval, its server down for longer than SPILL_AFTER_S (5 s): its ring filled
    with the open calls, the program waited for room, and Ctrl-C's cancellations each wrote
    an end into that full ring -- the program did not end (each write waited for a batch's
    120 s deadline). Now what fails goes to the dead letters once producers wait in an
    outage: it ends within seconds, every call written in the dead letters; and the replay
    joins each start and end dead-lettered apart into one complete call (before: 2,000
    single requests one at a time, ~46 s here, and an end sent before weave showed its
    start was refused 404 and kept)."""
    dead = tmp_path / "dead.jsonl"
    with FaultServer(weave_residence=True, end_needs_start=True, start_visible_after_s=0.2,
                     stall_s=0.02) as server:
        server.down()
        out, err, returncode, took_s = _ctrl_c_with_calls_open(server, dead, shutdown_timeout_s=2.0,
                                                               after_s=6.0)
        assert returncode == -signal.SIGINT and took_s < 20, (took_s, err[-3000:])
        stats = json.loads(out.splitlines()[-1])
        written = stats["ring"]["records_written"] // 2
        assert stats["dead_letters"] > written and stats["undelivered"] == 0  # starts alone too
        server.up()
        started = time.monotonic()
        replayed = subprocess.run([sys.executable, "-m", "engine", "replay", "--to", server.url,
                                   "--dead-letters", str(dead)], capture_output=True, text=True,
                                  timeout=120, env=bare_env())
        replay_s = time.monotonic() - started
        stored = server.snapshot()
        requests = len(server.records())
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr[-3000:]
    assert "joined into one complete call" in replayed.stdout
    assert len(stored) == written and not dead.exists()
    assert all("started_at" in call and "ended_at" in call for call in stored.values())
    assert requests < 20 and replay_s < 15, (requests, replay_s)
