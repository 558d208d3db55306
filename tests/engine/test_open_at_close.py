"""Calls still open when their engine closes are ended by the close, saying why.

A call open as the engine closes (the one a SIGTERM interrupted, a daemon thread's as the
program exits, a thread's as ``close()`` is called) never gets its own end: the close runs
once, and what is written after it is refused (``Closed``). The call showed as running on
the server for good. Now the close writes its end, its exception naming what closed the
engine; the handle's own later exit writes nothing (no second end, no warning).
Real programs (subprocesses) toward a real server on loopback (FaultServer).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.faultserver import FaultServer
from tests.pipeline import bare_env

pytestmark = [pytest.mark.integration]

_ENGINE = textwrap.dedent("""
    import json, sys, threading, time, engine
    eng = engine.Engine(url=sys.argv[1], project="ops/open", spool_dir="off",
                        dead_letter_path=sys.argv[2], compression="none",
                        shutdown_timeout_s=10.0)
    tracer = eng.producer()

    @tracer.op
    def wait_for(event):
        event.wait()
        return "not reached"

    def stream(n):
        yield from range(n)
    stream = tracer.op(stream)
""")

# SIGTERM while the main thread is inside its evaluate call and a worker thread in an op
_SIGTERMED = _ENGINE + textwrap.dedent("""
    for i in range(5):
        with tracer.call("done", inputs={"i": i}) as call:
            call.output = i
    never = threading.Event()
    threading.Thread(target=wait_for, args=(never,), daemon=True).start()
    with tracer.call("evaluate", inputs={"rows": 5}) as evaluate:
        evaluate.summary = {"rows_done": 5}
        print("ready", flush=True)
        while True:
            time.sleep(0.01)
""")

# the program ends (returns, or is stopped by Ctrl-C) with a daemon thread inside an op and
# a stream half consumed
_EXITED = _ENGINE + textwrap.dedent("""
    never = threading.Event()
    threading.Thread(target=wait_for, args=(never,), daemon=True).start()
    for i in range(5):
        with tracer.call("done", inputs={"i": i}):
            pass
    half = stream(10)
    assert next(half) == 0
    time.sleep(0.2)  # the thread is in its call
    print("ready", flush=True)
    if sys.argv[3:] == ["wait"]:
        while True:
            time.sleep(0.01)
""")

# close() inside a call: the call is ended by the close; its own exit writes nothing more
_CLOSED_INSIDE = _ENGINE + textwrap.dedent("""
    with tracer.call("main", inputs={}) as main:
        main.output = {"answer": 42}
        stats = eng.close()
    print(json.dumps({"ended": stats["calls_ended_at_close"]}), flush=True)
""")


# threads tracing calls back to back as close() comes: each call ends once, by its thread
# or by the close, whichever takes it first
_RACED = _ENGINE + textwrap.dedent("""
    stop = threading.Event()
    def spin(n):
        for i in range(1_000_000):
            if stop.is_set():
                return
            with tracer.call("spin", inputs={"thread": n, "i": i}) as call:
                call.output = i
    threads = [threading.Thread(target=spin, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    stats = eng.close()
    stop.set()
    for thread in threads:
        thread.join()
    print(json.dumps({"ended": stats["calls_ended_at_close"]}), flush=True)
""")


def _run(owner: str, tmp_path, env: dict[str, str], sig: int | None = None):
    """``owner`` toward a FaultServer, sent ``sig`` once it is ready: (its exit code,
    stdout, stderr, what was stored, the deliveries received again)."""
    with FaultServer() as server:
        proc = subprocess.Popen([sys.executable, "-c", owner, server.url,
                                 str(tmp_path / "dead.jsonl"), "wait" if sig else "return"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=bare_env(**env))
        try:
            if sig is not None:
                line = proc.stdout.readline()
                assert line == "ready\n", (line, proc.stderr.read()[-3000:])
                os.kill(proc.pid, sig)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        calls = {call["id"]: call for call in server.snapshot().values()}
        return proc.returncode, out, err, calls, server.duplicate_deliveries()


def _by_op(calls: dict) -> dict[str, list[dict]]:
    ops: dict[str, list[dict]] = {}
    for call in calls.values():
        ops.setdefault(call["op_name"].rsplit("/", 1)[-1].split(":")[0], []).append(call)
    return ops


_PATHS = [pytest.param({}, id="accelerated"),
          pytest.param({"ENGINE_PURE_PYTHON": "1"}, id="pure-python")]


@pytest.mark.parametrize("env", _PATHS)
def test_sigterm_ends_the_calls_it_interrupted_saying_so(tmp_path, env):
    """Before: the evaluate call and the thread's op stayed open on the server (started,
    never ended); the calls that returned were delivered."""
    code, _, err, calls, again = _run(_SIGTERMED, tmp_path, env, signal.SIGTERM)
    assert code == -signal.SIGTERM, err[-3000:]
    ops = _by_op(calls)
    assert sorted(c["output"] for c in ops["done"]) == [0, 1, 2, 3, 4]
    assert not any(c.get("exception") for c in ops["done"])
    (evaluate,), (waited,) = ops["evaluate"], ops["wait_for"]
    for call in (evaluate, waited):
        assert call.get("ended_at"), (call, err[-3000:])
        assert call["exception"].startswith("Terminated: the process got SIGTERM"), call
    assert evaluate["summary"] == {"rows_done": 5}  # what the handle held
    assert waited.get("parent_id") is None and evaluate["trace_id"] != waited["trace_id"]
    assert "2 calls were still open as it closed (SIGTERM)" in err, err[-3000:]
    assert again == 0


@pytest.mark.parametrize("env", _PATHS)
@pytest.mark.parametrize(("sig", "code", "text", "said"), [
    (None, 0, "Unfinished: the program exited", "the program's exit"),
    (signal.SIGINT, -signal.SIGINT, "Interrupted: the program was stopped by Ctrl-C",
     "the program's exit on Ctrl-C")], ids=["returns", "ctrl-c"])
def test_the_exit_ends_a_daemon_threads_call_and_a_half_consumed_stream(
        tmp_path, env, sig, code, text, said):
    """Before: both stayed open (the thread dies with the interpreter; the stream's end
    came at the interpreter's teardown, after the engine closed: Closed, dropped)."""
    returncode, _, err, calls, again = _run(_EXITED, tmp_path, env, sig)
    assert returncode == code, err[-3000:]
    ops = _by_op(calls)
    assert len(ops["done"]) == 5 and all(c.get("ended_at") for c in ops["done"])
    (waited,), (streamed,) = ops["wait_for"], ops["stream"]
    for call in (waited, streamed):
        assert call.get("ended_at"), (call, err[-3000:])
        assert call["exception"].startswith(text), call
    assert f"2 calls were still open as it closed ({said})" in err, err[-3000:]
    assert "not traced" not in err, err[-3000:]  # the stream's own end: nothing said
    assert again == 0


@pytest.mark.parametrize("env", _PATHS)
def test_close_inside_a_call_ends_it_once_with_what_it_held(tmp_path, env):
    code, out, err, calls, again = _run(_CLOSED_INSIDE, tmp_path, env)
    assert code == 0, err[-3000:]
    assert json.loads(out) == {"ended": 1}
    (main,) = calls.values()
    assert main["output"] == {"answer": 42}
    assert main["exception"].startswith("Unfinished: the engine was closed"), main
    assert "1 call was still open as it closed (close())" in err, err
    assert "not traced" not in err, err  # the with block's own exit wrote nothing
    assert again == 0


@pytest.mark.parametrize("env", _PATHS)
def test_calls_raced_by_the_close_end_once_each_and_none_stays_open(tmp_path, env):
    code, out, err, calls, again = _run(_RACED, tmp_path, env)
    assert code == 0, err[-3000:]
    ended = json.loads(out)["ended"]
    assert 0 <= ended <= 4  # at most the one call each thread was in
    assert len(calls) > 100
    assert not [c["id"] for c in calls.values() if not c.get("ended_at")], err[-3000:]
    by_close = [c for c in calls.values()
                if (c.get("exception") or "").startswith("Unfinished: the engine was closed")]
    assert len(by_close) == ended, (ended, len(by_close))
    assert not [c for c in calls.values() if c.get("exception") and c not in by_close]
    assert again == 0  # no call got two ends
