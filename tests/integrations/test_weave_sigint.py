"""The weave integration's SIGINT guard (engine/integrations/_weave_sigint.py): Ctrl-C that
lands in guarded code (weave's hand-off to its pool, the standard library's thread
synchronisation) is raised at the first line after it, in the code that called it; anywhere
else at once. Run in a child interpreter: the guard replaces SIGINT's handler."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine.common._env import OTHER_PYTHONS

_PROGRAM = textwrap.dedent(
    """
    import os, signal, sys, json
    sys.path.insert(0, sys.argv[1])
    import guarded
    from engine.integrations import _weave_sigint

    results = {}

    def run(name):
        log = []
        try:
            guarded.hand_off(log)
            log.append("caller")
        except KeyboardInterrupt:
            log.append("KeyboardInterrupt")
        results[name] = log

    run("python's own handler")
    results["installed"] = _weave_sigint.install(guarded)
    run("guarded")
    sys.settrace(lambda *a: None)  # a debugger or coverage traces the thread: no guard
    run("traced")
    sys.settrace(None)
    log = []
    try:
        os.kill(os.getpid(), signal.SIGINT)
        log.append("unguarded line")
    except KeyboardInterrupt:
        log.append("KeyboardInterrupt")
    results["unguarded"] = log
    results["second install"] = _weave_sigint.install(guarded)  # SIGINT is ours now
    print(json.dumps(results))
    """
)
_GUARDED = textwrap.dedent(
    """
    import os, signal

    def hand_off(log):
        os.kill(os.getpid(), signal.SIGINT)  # handled at the next check, in this frame
        for i in range(3):
            log.append(i)
        log.append("end")
    """
)


def _run(tmp_path, program_text: str, guarded: str = _GUARDED) -> subprocess.CompletedProcess:
    """``program_text`` in a child interpreter, beside ``guarded`` (as ``guarded.py``)."""
    (tmp_path / "guarded.py").write_text(guarded)
    program = tmp_path / "program.py"
    program.write_text(program_text)
    return subprocess.run([sys.executable, str(program), str(tmp_path)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def test_ctrl_c_in_guarded_code_is_raised_right_after_it(tmp_path):
    result = _run(tmp_path, _PROGRAM)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert out["python's own handler"] == ["KeyboardInterrupt"]  # inside the hand-off
    assert out["installed"] is True
    assert out["guarded"] == [0, 1, 2, "end", "KeyboardInterrupt"]  # after it, not inside
    assert out["traced"] == ["KeyboardInterrupt"]
    assert out["unguarded"] == ["KeyboardInterrupt"]
    assert out["second install"] is False


_GUARDED_WITH_A_FINALIZER = textwrap.dedent(
    """
    import gc, os, signal
    from finalized import Finalized

    class Dropped(Finalized):  # made here, finalized in finalized.py (not guarded)
        def __init__(self, log):
            self.log = log

    def hand_off(log):
        os.kill(os.getpid(), signal.SIGINT)  # handled at the next check, in this frame
        Dropped(log)  # freed at once: its __del__ is the first code run outside
        log.append("end")
    """
)


def test_a_ctrl_c_deferred_past_a_finalizer_is_raised_in_the_caller_not_lost_in_it(tmp_path):
    """The first line run outside the guarded code may be a finalizer's (``__del__``, the
    ``__repr__`` of a ResourceWarning for an unclosed socket) that the guarded code set off:
    an exception raised there is printed and dropped. The KeyboardInterrupt was raised
    there and lost: a notebook's interrupt, landing in ``Future.__init__``, never took
    (the cell ran its 30 s loop to the end; 1 in ~13 runs of
    tests/notebook/test_weave_in_a_kernel.py beside two CPU-bound processes). It is raised
    in the interrupted code's callers, once the guarded code returns to them."""
    (tmp_path / "finalized.py").write_text(textwrap.dedent(
        """
        class Finalized:
            def __del__(self):
                self.log.append("finalizer")
        """))
    result = _run(tmp_path, _PROGRAM, _GUARDED_WITH_A_FINALIZER)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["guarded"] == ["finalizer", "end", "KeyboardInterrupt"], \
        result.stderr


_DROPPED_PROGRAM = textwrap.dedent(
    """
    import contextlib, json, os, signal, sys, time
    sys.path.insert(0, sys.argv[1])
    import guarded
    from engine.integrations import _weave_sigint

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)  # handled at the next check: in here
            self.landed = True

    def caught():
        try:
            try:
                time.sleep(5)  # the signal lands in C: raised in this frame, caught here
            finally:
                log.append("finally")
        except KeyboardInterrupt:
            log.append("caught")
        log.append("went on")
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with contextlib.suppress(KeyboardInterrupt):
            time.sleep(5)  # the program ignores this one
        log.append("suppressed")

    results = {}
    for name in ("python's own handler", "guarded"):
        if name == "guarded":
            _weave_sigint.install(guarded)
        log = []
        try:
            Finalized()  # freed at once, its __del__ run by the interpreter, not by a line
            log.append("after")
        except KeyboardInterrupt:
            log.append("KeyboardInterrupt")
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        signal.signal(signal.SIGALRM, lambda *a: os.kill(os.getpid(), signal.SIGINT))
        caught()
        results[name] = log
    print(json.dumps(results))
    """
)


def test_a_ctrl_c_raised_where_it_is_dropped_is_raised_again_in_the_interrupted_code(tmp_path):
    """Python runs a handler wherever it next checks for signals, and some code drops what
    it raises there: a finalizer's (``__del__``: "Exception ignored in"; C finalizers run as
    the garbage collector frees objects, with no trace at all). The Ctrl-C was lost: a
    notebook's interrupt that landed so in weave's serialisation never took (1 in ~15 runs
    of the interrupted loop beside two CPU-bound processes). With the guard it is raised
    again at the next line of the code it interrupted; one that arrives (caught by the
    program) is not raised twice."""
    result = _run(tmp_path, _DROPPED_PROGRAM)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    went_on = ["finally", "caught", "went on", "suppressed"]
    assert out["python's own handler"] == ["after", *went_on]  # the first lost
    assert out["guarded"] == ["KeyboardInterrupt", *went_on], result.stderr


_ASYNCIO_PROGRAM = textwrap.dedent(
    """
    import asyncio, os, signal, sys, json
    sys.path.insert(0, sys.argv[1])
    import guarded
    from engine.integrations import _weave_sigint

    _weave_sigint.install(guarded)
    log = []

    async def main():
        log.append("handler in run: " + ("ours" if signal.getsignal(signal.SIGINT)
                                         is _weave_sigint._on_sigint else "asyncio's"))
        try:
            os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C: asyncio cancels us
            await asyncio.sleep(60)
            log.append("not cancelled")
        except asyncio.CancelledError:
            log.append("cancelled")
            guarded.hand_off(log)  # the second Ctrl-C, inside guarded code: raised after it
            log.append("caller")

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        log.append("KeyboardInterrupt")
    log.append("handler after run: " + ("ours" if _weave_sigint._get_handler(signal.SIGINT)
                                        is _weave_sigint._on_sigint else "another"))
    print(json.dumps(log))
    """
)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.Runner handles SIGINT from 3.11")
def test_asyncio_run_still_turns_ctrl_c_into_a_cancellation(tmp_path):
    """asyncio.run sets its own SIGINT handler (the first Ctrl-C cancels the main task, so
    a weave Evaluation stops as asyncio stops it) only over Python's default; with the
    guard installed it stands while asyncio runs, and a second Ctrl-C asyncio raises inside
    guarded code waits until after it. (Before: asyncio kept the guard's handler and the
    first Ctrl-C raised KeyboardInterrupt inside the coroutine, no cancellation.)"""
    result = _run(tmp_path, _ASYNCIO_PROGRAM)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout) == [
        "handler in run: asyncio's", "cancelled", 0, 1, 2, "end", "KeyboardInterrupt",
        "handler after run: ours"]  # fmt: skip


_FRAMES_PROGRAM = textwrap.dedent(
    """
    import asyncio, json, signal, sys, traceback
    sys.path.insert(0, sys.argv[1])
    import guarded
    from engine.integrations import _weave_sigint

    _weave_sigint.install(guarded)

    async def main():
        return [f.filename for f in traceback.extract_stack()]

    files = asyncio.run(main())
    print(json.dumps({"ours": [f for f in files if "/engine/" in f],
                      "seen": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
                      "guard": _weave_sigint._get_handler(signal.SIGINT)
                      is _weave_sigint._on_sigint}))
    """
)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.Runner handles SIGINT from 3.11")
def test_no_frame_of_the_guard_is_on_the_stack_of_what_asyncio_runs(tmp_path):
    """weave stores the whole stack of an op's exception (``traceback.extract_stack``): a
    frame of the guard's around ``asyncio.Runner.run`` was in every one raised in a weave
    ``Evaluation`` through the integration (weave alone: none; found comparing a 1,000-row
    Evaluation's calls, ``python -m bench.weave_eval``). The program sees Python's default
    SIGINT handler, the guard standing for it before and after the run."""
    result = _run(tmp_path, _FRAMES_PROGRAM)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout) == {"ours": [], "seen": True, "guard": True}


_SIGTERM_GUARDED = textwrap.dedent(
    """
    import os, signal, threading

    LOCK = threading.Lock()  # as the pool's locks: what weave's threads need to go on
    LOG = []

    def hand_off():
        with LOCK:
            os.kill(os.getpid(), signal.SIGTERM)  # handled at the next check, lock held
            for i in range(3):
                LOG.append(i)
        LOG.append("end")
    """
)
_SIGTERM_PROGRAM = textwrap.dedent(
    """
    import json, signal, sys
    sys.path.insert(0, sys.argv[1])
    import guarded
    from engine.integrations import _weave_sigint
    from engine.producer import _engine

    _weave_sigint.install(guarded)
    _engine.defer_sigterm_with(_weave_sigint.defer_if_guarded)  # as install() does

    def drain():  # as the integration's SIGTERM hook: waits for what weave's threads need
        print(json.dumps({"lock free": guarded.LOCK.acquire(timeout=5), "log": guarded.LOG}),
              flush=True)

    _engine.before_sigterm_close(drain)
    signal.signal(signal.SIGTERM, _engine._on_sigterm)  # as an Engine sets it
    guarded.hand_off()
    print("not reached", flush=True)
    """
)


def test_sigterm_in_guarded_code_settles_right_after_it(tmp_path):
    """The engine's SIGTERM handler waits for weave's threads; run while the interrupted code
    holds a lock of weave's hand-off those threads need, it waited its 10 s for nothing and
    the calls they held were lost (a clean-clone CI run: 0 of 203 finished calls stored,
    "1218 (of 1222) futures unfinished"). It now runs at the first line outside that code."""
    result = _run(tmp_path, _SIGTERM_PROGRAM, _SIGTERM_GUARDED)
    assert result.returncode == -signal.SIGTERM, result.stderr[-3000:]
    assert result.stdout.splitlines() == [
        json.dumps({"lock free": True, "log": [0, 1, 2, "end"]})], result.stderr[-3000:]


# A program's text: SIGTERM's handler called in the zero-timeout wait with which
# ThreadPoolExecutor.submit polls its idle semaphore, at the line where that wait holds the
# semaphore's lock, as the signal would run it there (the program defines before_signal and
# imports inspect, signal, sys, threading and engine.producer._engine).
SIGTERM_IN_THE_POLL = textwrap.dedent(
    """
    lines, first = inspect.getsourcelines(threading.Condition.wait)
    HELD = first + next(n for n, line in enumerate(lines) if "_waiters.append" in line)

    def sigterm_in_the_poll(frame, event, arg):
        if event == "call":
            return sigterm_in_the_poll if frame.f_code is threading.Condition.wait.__code__ else None
        if event == "line" and frame.f_lineno == HELD and frame.f_locals["timeout"] == 0:
            sys.settrace(None)
            frame.f_trace = None
            before_signal()
            _engine._on_sigterm(signal.SIGTERM, frame)  # as SIGTERM landing here runs it
            return frame.f_trace
        return sigterm_in_the_poll
    """
)
_POLL_PROGRAM = textwrap.dedent(
    """
    import inspect, json, signal, sys, threading
    sys.path.insert(0, sys.argv[1])
    import guarded
    from engine.integrations import _weave_sigint
    from engine.producer import _engine

    _weave_sigint.install(guarded)
    _engine.defer_sigterm_with(_weave_sigint.defer_if_guarded)  # as install() does
    _engine.before_sigterm_close(lambda: print(json.dumps({  # as the integration's hook
        "lock free": guarded.LOCK.acquire(timeout=1), "log": guarded.LOG}), flush=True))
    def before_signal():
        pass
    """
) + SIGTERM_IN_THE_POLL + textwrap.dedent(
    """
    sys.settrace(sigterm_in_the_poll)
    guarded.hand_off()
    print("not reached", flush=True)
    """
)
_POLL_GUARDED = textwrap.dedent(
    """
    import threading

    IDLE = threading.Semaphore(0)  # as ThreadPoolExecutor's idle semaphore: no idle worker
    LOCK = IDLE._cond  # what a worker takes to say it is idle (Semaphore.release)
    SUBMIT_LOCK = threading.Lock()
    LOG = []

    def hand_off():
        with SUBMIT_LOCK:  # as submit: its lock held while it polls for an idle worker
            IDLE.acquire(timeout=0)  # a Condition.wait with a zero timeout
        LOG.append("end")
    """
)


def test_sigterm_in_a_wait_that_only_polls_settles_after_it(tmp_path):
    """``ThreadPoolExecutor.submit`` (every ``@weave.op`` call) polls its idle semaphore with
    a zero timeout: a ``Condition.wait`` that holds the semaphore's lock, which every weave
    thread takes when it finishes a task. A SIGTERM handled there ran at once (a wait was taken
    for waiting): weave's threads all stopped on that lock and the engine's SIGTERM hook
    waited its 10 s for nothing (a full-suite run: 0 of 219 calls stored). Now it runs at the
    first line after the hand-off. The handler is called as the signal calls it, with the
    frame of that wait, at the line where it holds the lock."""
    result = _run(tmp_path, _POLL_PROGRAM, _POLL_GUARDED)
    assert result.returncode == -signal.SIGTERM, result.stderr[-3000:]
    assert result.stdout.splitlines() == [
        json.dumps({"lock free": True, "log": ["end"]})], result.stderr[-3000:]


_BLOCKED_GUARDED = textwrap.dedent(
    """
    import signal, threading

    LOCK = threading.Lock()  # never held: what the hook may take
    LOG = []

    def hand_off():
        main = threading.main_thread().ident
        threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGTERM)).start()
        threading.Event().wait(30)  # blocked, holding nothing: the signal is handled now
        LOG.append("end")
    """
)


def test_sigterm_in_a_wait_that_blocks_is_handled_at_once(tmp_path):
    """A wait that blocks holds none of its locks: deferring the SIGTERM to after it would
    keep the program running as long as it waits."""
    started = time.monotonic()
    result = _run(tmp_path, _SIGTERM_PROGRAM, _BLOCKED_GUARDED)
    assert result.returncode == -signal.SIGTERM, result.stderr[-3000:]
    assert result.stdout.splitlines() == [
        json.dumps({"lock free": True, "log": []})], result.stderr[-3000:]
    assert time.monotonic() - started < 20


# guarded code that takes a signal while it holds a lock, then blocks in a wait (as
# Future.result() may, for long): the deferred signal's work runs before it waits, not after
_DEFERRED_THEN_BLOCKED = textwrap.dedent(
    """
    import os, signal, threading

    LOCK = threading.Lock()
    COND = threading.Condition()
    LOG = []

    def hand_off():
        with LOCK:
            os.kill(os.getpid(), signal.{signal})  # handled at the next check, lock held
            LOG.append(0)
        with COND:
            COND.wait(30)  # then it blocks
        LOG.append("end")
    """
)


def test_a_deferred_sigterm_runs_before_the_guarded_code_blocks(tmp_path):
    """A SIGTERM deferred out of the guarded code's locks runs where that code goes on to
    block in a wait (holding none of them), not once the wait is over."""
    started = time.monotonic()
    result = _run(tmp_path, _SIGTERM_PROGRAM, _DEFERRED_THEN_BLOCKED.format(signal="SIGTERM"))
    assert result.returncode == -signal.SIGTERM, result.stderr[-3000:]
    assert result.stdout.splitlines() == [
        json.dumps({"lock free": True, "log": [0]})], result.stderr[-3000:]
    assert time.monotonic() - started < 20


_CTRL_C_PROGRAM = textwrap.dedent(
    """
    import json, sys, time
    sys.path.insert(0, sys.argv[1])
    import guarded
    from engine.integrations import _weave_sigint

    _weave_sigint.install(guarded)
    started = time.monotonic()
    try:
        guarded.hand_off()
    except KeyboardInterrupt:
        guarded.LOG.append("KeyboardInterrupt")
    print(json.dumps({"log": guarded.LOG, "fast": time.monotonic() - started < 20,
                      "locks free": guarded.LOCK.acquire(blocking=False)
                      and guarded.COND.acquire(blocking=False)}))
    """
)


def test_a_deferred_ctrl_c_is_raised_before_the_guarded_code_blocks(tmp_path):
    """Ctrl-C deferred out of the guarded code's locks is raised where that code goes on to
    block in a wait, inside the wait's own try block (the condition's lock is taken back and
    given up as the exception leaves), not once the wait is over."""
    result = _run(tmp_path, _CTRL_C_PROGRAM, _DEFERRED_THEN_BLOCKED.format(signal="SIGINT"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout) == {
        "log": [0, "KeyboardInterrupt"], "fast": True, "locks free": True}


_OWN_HANDLER_PROGRAM = textwrap.dedent(
    """
    import json, signal, sys
    sys.path.insert(0, sys.argv[1])
    import guarded
    from engine.integrations import _weave_sigint

    SIG, WHEN = getattr(signal, "SIGNAME"), "WHEN"

    def stop(signum, frame):  # as many programs and frameworks do: unwind, run atexit
        print(json.dumps({"lock free": guarded.LOCK.acquire(timeout=1), "log": guarded.LOG,
                          "in": frame.f_code.co_filename.rsplit("/", 1)[-1]}), flush=True)
        sys.exit(143)

    if WHEN == "before":
        signal.signal(SIG, stop)
    _weave_sigint.install(guarded)
    if WHEN == "after":
        assert signal.signal(SIG, stop) in (signal.SIG_DFL, signal.default_int_handler)
    assert signal.getsignal(SIG) is stop  # the program sees its own handler, not the guard
    assert signal.signal(SIG, stop) is stop
    guarded.hand_off(SIG)
    print("not reached", flush=True)
    """
)
_OWN_HANDLER_GUARDED = textwrap.dedent(
    """
    import os, threading

    LOCK = threading.Lock()  # a lock weave's threads need, as the pool's and the futures'
    LOG = []

    def hand_off(sig):
        with LOCK:
            os.kill(os.getpid(), sig)  # handled at the next check, in this frame
            for i in range(3):
                LOG.append(i)
        LOG.append("end")
    """
)


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_programs_own_handler_runs_after_the_guarded_code(tmp_path, sig, when):
    """A program's own handler (``sys.exit``, set before the integration is installed or
    after it) raised inside weave's hand-off as Python delivers it: the lock it held stayed
    taken, weave's threads stopped on it and the exit's join of them hung for ever (3 of 84
    SIGTERMs at random points of a weave eval loop with such a handler). It now runs at the
    first line after the guarded code, with the frame it interrupts there."""
    program = _OWN_HANDLER_PROGRAM.replace('"SIGNAME"', repr(sig)).replace('"WHEN"', repr(when))
    result = _run(tmp_path, program, _OWN_HANDLER_GUARDED)
    assert result.returncode == 143, result.stderr[-3000:]
    assert result.stdout.splitlines() == [json.dumps(
        {"lock free": True, "log": [0, 1, 2, "end"], "in": "program.py"})], result.stderr[-3000:]


# Ctrl-C while the main thread waits for another thread, with the guard installed; the
# guard's module is loaded from its file, so any interpreter runs this (ENGINE_OTHER_PYTHONS)
_WAITING_THREAD = textwrap.dedent(
    """
    import importlib.util, json, signal, sys, threading, time
    from concurrent.futures import ThreadPoolExecutor

    spec = importlib.util.spec_from_file_location("_weave_sigint", sys.argv[1])
    guard = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(guard)
    assert guard.install()
    # Thread.join (3.13+ in C), Condition.wait, the exit's wait for non-daemon threads
    WAITS = {"join", "_wait_for_tstate_lock", "wait", "_shutdown"}

    def asleep(thread):  # in a system call: a signal sent now interrupts it
        with open(f"/proc/self/task/{thread.native_id}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "S"

    def waiting(thread):
        code = sys._current_frames()[thread.ident].f_code
        return code.co_filename == threading.__file__ and code.co_name in WAITS and asleep(thread)

    def ctrl_c_once_waiting(armed):
        # once the main thread sleeps in the wait: a signal that lands as it goes to sleep
        # waits for it to wake, guard or not (CPython checks for signals before it sleeps)
        armed.wait(10)
        main, deadline = threading.main_thread(), time.monotonic() + 10
        while not waiting(main) and time.monotonic() < deadline:
            time.sleep(0.001)
        signal.pthread_kill(main.ident, signal.SIGINT)  # as a terminal's: to the waiting thread
    """
)
_WAITS_PROGRAM = _WAITING_THREAD + textwrap.dedent(
    """
    def run(case):
        release, done, armed = threading.Event(), threading.Event(), threading.Event()
        def work():
            release.wait(10)  # a working Ctrl-C ends the main thread's wait long before
            done.set()
        threading.Thread(target=ctrl_c_once_waiting, args=(armed,), daemon=True).start()
        pool = ThreadPoolExecutor(1)
        try:
            if case == "thread.join()":
                thread = threading.Thread(target=work)
                thread.start()
                armed.set()
                thread.join()
            elif case == "pool.shutdown(wait=True)":
                pool.submit(work)
                armed.set()
                pool.shutdown(wait=True)
            else:
                future = pool.submit(work)
                armed.set()
                future.result()
            outcome = "returned"
        except KeyboardInterrupt:
            outcome = "KeyboardInterrupt"
        result = {"case": case, "outcome": outcome, "while waiting": not done.is_set()}
        release.set()
        pool.shutdown(wait=True)
        return result

    print(json.dumps([run(case) for case in
                      ("thread.join()", "pool.shutdown(wait=True)", "future.result()")]))
    """
)
_SIGINT_MODULE = Path(__file__).parents[2] / "engine" / "integrations" / "_weave_sigint.py"
_OTHER_PYTHONS = [p for p in os.environ.get(OTHER_PYTHONS, "").split(os.pathsep) if p]


@pytest.mark.parametrize("python", [sys.executable, *_OTHER_PYTHONS])
def test_ctrl_c_while_waiting_for_a_thread_is_raised_at_once(tmp_path, python):
    """A wait for another thread holds none of the guarded locks: Ctrl-C there is raised at
    once, as Python raises it. On Python 3.13 ``Thread.join`` waits in C (``_handle.join``),
    with ``Thread.join`` itself as the interrupted frame; the guard knew the join only by
    3.10-3.12's ``_wait_for_tstate_lock`` and deferred the Ctrl-C to the first line after
    the join, when the thread ended (here after its 10 s wait: "while waiting" false for
    ``thread.join()`` and ``ThreadPoolExecutor.shutdown(wait=True)``; so also in the exit's
    join of weave's pool threads). Run by ``python``: this suite's interpreter, and each one
    named in ``ENGINE_OTHER_PYTHONS`` (docs/configuration.md)."""
    program = tmp_path / "program.py"
    program.write_text(_WAITS_PROGRAM)
    result = subprocess.run([python, str(program), str(_SIGINT_MODULE)], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout) == [
        {"case": case, "outcome": "KeyboardInterrupt", "while waiting": True}
        for case in ("thread.join()", "pool.shutdown(wait=True)", "future.result()")]


def test_a_frame_in_thread_join_counts_as_blocked_unless_it_only_polls():
    """The rule the test above checks on 3.13, on this suite's Python: a signal that finds
    ``Thread.join`` itself as the interrupted frame (3.13's join waits in C) is in a wait
    that holds nothing, unless its timeout is zero (a poll). 3.10-3.12 wait one frame
    deeper, in ``_wait_for_tstate_lock``, which counted already."""
    from engine.integrations import _weave_sigint

    def join_frame(timeout):
        return SimpleNamespace(f_code=threading.Thread.join.__code__, f_locals={
            "self": threading.current_thread(), "timeout": timeout}, f_lineno=0)

    assert _weave_sigint._blocked(join_frame(None))
    assert _weave_sigint._blocked(join_frame(2.5))
    assert not _weave_sigint._blocked(join_frame(0))


_EXIT_PROGRAM = _WAITING_THREAD + textwrap.dedent(
    """
    import atexit
    release, done, armed = threading.Event(), threading.Event(), threading.Event()

    def work():  # a program's non-daemon thread: the exit waits for it
        release.wait(10)
        done.set()

    atexit.register(lambda: print(json.dumps({"atexit ran": True,
                                              "while waiting": not done.is_set()})))
    threading.Thread(target=work).start()
    threading.Thread(target=ctrl_c_once_waiting, args=(armed,), daemon=True).start()
    armed.set()
    """
)


@pytest.mark.parametrize("python", [sys.executable, *_OTHER_PYTHONS])
def test_ctrl_c_while_the_exit_waits_for_a_thread_stops_the_wait(tmp_path, python):
    """The interpreter's exit waits for the program's non-daemon threads in
    ``threading._shutdown``, holding no lock. The guard took that for hand-off code (on every
    Python) and deferred the Ctrl-C until the thread ended, then raised it in the first line
    of Python run after: the first atexit callback, which it aborted (before: the callback
    printed nothing, the program ran on for the thread's 10 s). Now raised at once, as
    Python raises it, and the atexit callbacks run."""
    program = tmp_path / "program.py"
    program.write_text(_EXIT_PROGRAM)
    result = subprocess.run([python, str(program), str(_SIGINT_MODULE)], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.stdout.splitlines() == [
        json.dumps({"atexit ran": True, "while waiting": True})], result.stderr[-3000:]
    assert "KeyboardInterrupt" in result.stderr


_EVENT_LOOP_HANDLERS = textwrap.dedent(
    """
    import asyncio, json, os, signal, sys, threading
    import uvloop
    from engine.integrations import _weave_sigint

    _weave_sigint.install(threading)
    got = []

    async def main(sig):
        loop, done = asyncio.get_running_loop(), asyncio.Event()
        loop.add_signal_handler(sig, lambda: (got.append(sig.name), done.set()))
        os.kill(os.getpid(), sig)
        await asyncio.wait_for(done.wait(), 10)
        got.append(loop.remove_signal_handler(sig))
        got.append(signal.getsignal(sig) is signal.SIG_DFL)

    asyncio.run(main(signal.SIGTERM))
    uvloop.run(main(signal.SIGUSR1))
    got.append(signal.signal(signal.SIGTERM, signal.SIG_IGN) is signal.SIG_DFL)
    got.append(signal.getsignal(signal.SIGTERM) is signal.SIG_IGN)
    print(json.dumps(got))
    """
)


def test_event_loops_signal_handlers_work_beside_the_guard(tmp_path):
    """The guard wraps the Python handlers a program sets: asyncio's and uvloop's
    ``add_signal_handler`` (which set and reset handlers themselves) still call back, remove,
    and leave the default; ``signal.signal`` / ``getsignal`` give back the module's values."""
    result = _run(tmp_path, _EVENT_LOOP_HANDLERS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout) == ["SIGTERM", True, True, "SIGUSR1", True, True, True, True]
