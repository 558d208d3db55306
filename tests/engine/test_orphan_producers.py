"""Producers that outlive their engine: they never wait for ever for room in their ring.

A process the owner forked (a ``multiprocessing`` Pool finishing its tasks) may go on
tracing after the owner is gone (SIGKILLed: the OOM killer) or closed its engine. The
sender stayed for such producers until ``shutdown_timeout_s``, then left; what they wrote
after filled their ring, and then each call waited for room for ever (``on_full="block"``,
the default), saying "the sender is behind" every ``max_block_ms``: the worker hung.

Now, the owner dead, the sender stays while they write (it exits once they have); and a
producer whose ring nobody will read again (its engine closed, no sender) stops waiting:
its call is dropped, counted (``dropped_full``) and said once, and the program goes on."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.faultserver import FaultServer
from tests.pipeline import ROOT, bare_env, poll_until

pytestmark = pytest.mark.integration

_PROJECT = "orphans/late"
_OWNER = textwrap.dedent("""
    import multiprocessing, os, signal, sys, time
    import engine

    def child(tracer, calls, attached):
        with tracer.call("early") as call:  # attached to its ring before the owner goes
            call.output = os.getpid()
        attached.set()
        print(os.getpid(), flush=True)
        while not os.path.exists(sys.argv[3]):  # the test says when
            time.sleep(0.02)
        for i in range(calls):  # 20 KB each: the 64 KiB ring fills after a few
            with tracer.call("late", inputs={"x": "x" * 20_000}) as call:
                call.output = i
        print("done", flush=True)

    if __name__ == "__main__":
        multiprocessing.set_start_method("fork")
        eng = engine.Engine(url=sys.argv[1], project="orphans/late", ring_bytes=64 << 10,
                            shutdown_timeout_s=1.0, max_block_ms=200, spool_dir="off",
                            dead_letter_path=sys.argv[4])
        attached = multiprocessing.Event()
        worker = multiprocessing.Process(target=child, args=(eng.producer(), 40, attached))
        worker.start()
        attached.wait(60)  # a loaded box may start the worker late (a clean-clone CI run)
        if sys.argv[2] == "killed":
            os.kill(os.getpid(), signal.SIGKILL)  # the OOM killer: no close()
        eng.close(timeout_s=1.0)  # closed while its worker goes on
        print("closed", flush=True)
        worker.join()
""")


def _ours(pid: int) -> bool:
    """``pid`` is still the owner or its worker (their command line holds the script), not
    a process that took the number since."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return _PROJECT.encode() in file.read()
    except OSError:
        return False


def _run(tmp_path, server: FaultServer, end: str) -> str:
    """The owner, ended by ``end``, and its worker, told to trace its 40 late calls once
    the sender would have left (past shutdown_timeout_s); the log (owner, worker, sender)."""
    go, out, log = tmp_path / "go", tmp_path / "out.txt", tmp_path / "log.txt"
    with open(out, "w") as stdout, open(log, "w") as stderr:
        owner = subprocess.Popen(
            [sys.executable, "-c", _OWNER, server.url, end, str(go), str(tmp_path / "dead")],
            stdout=stdout, stderr=stderr, env=bare_env(), cwd=str(ROOT),
            start_new_session=True)
    worker = 0
    try:
        assert poll_until(lambda: out.read_text().split()[:1], timeout_s=60), log.read_text()
        worker = int(out.read_text().split()[0])
        if end == "killed":
            owner.wait(timeout=30)
        else:
            assert poll_until(lambda: "closed" in out.read_text(), timeout_s=60), log.read_text()
        time.sleep(2.0)  # past the sender's shutdown_timeout_s (1 s): it stayed, or left
        go.touch()
        assert poll_until(lambda: "done" in out.read_text(), timeout_s=60), (
            "the worker never finished its calls", log.read_text()[-3000:])
        owner.wait(timeout=30)
    finally:
        for pid in (owner.pid, worker):
            if pid and _ours(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        owner.wait()
    return log.read_text()


def test_the_workers_of_a_killed_owner_are_served_until_they_are_done(tmp_path):
    """The owner SIGKILLed while a worker it forked still traces: the sender stays while
    that worker writes, delivers its calls, and exits once it has."""
    with FaultServer() as server:
        log = _run(tmp_path, server, "killed")
        assert server.wait_for(lambda: len(server.stored_ids(_PROJECT)) == 41, timeout_s=60), (
            len(server.stored_ids(_PROJECT)), log[-3000:])
    assert "still write: staying while they do" in log, log[-3000:]
    assert "still waiting" not in log and "Traceback" not in log, log[-3000:]


def test_a_worker_whose_engine_was_closed_does_not_wait_for_ever_for_room(tmp_path):
    """The owner closed its engine and lives on while its worker traces: nobody reads that
    ring again (the sender left at close()'s deadline). The worker's calls that find it
    full are dropped, counted and said once, not waited on for ever."""
    with FaultServer() as server:
        log = _run(tmp_path, server, "closed")
        # what the ring held when the worker gave up: recovered as any closed ring set's
        replayed = subprocess.run(
            [sys.executable, "-m", "engine", "replay", "--to", server.url],
            capture_output=True, text=True, timeout=120,
            env=bare_env(), cwd=str(ROOT))
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr[-3000:]
        assert "1 ring sets of dead engines recovered" in replayed.stdout, replayed.stdout
        assert len(server.stored_ids(_PROJECT)) > 1  # the early call and the late ones it held
    lines = [line for line in log.splitlines() if "no sender will read it again" in line]
    assert len(lines) == 1, log[-3000:]
    assert "dropped_full" in lines[0]
    assert "still waiting" not in log and "Traceback" not in log, log[-3000:]
