"""Producers in other processes and every way a process can end: every call arrives."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import engine
from engine.ring import _files as ring_files
from tests.engine.helpers import PROJECT, make_engine, trace_calls, trace_structs
from tests.faultserver import FaultServer
from tests.pipeline import poll_until

pytestmark = pytest.mark.integration

CALLS_PER_CHILD = 20


def _child_work(tracer, tag: str) -> list[str]:
    return trace_calls(tracer, CALLS_PER_CHILD, prefix=tag)


def _child_process(tracer, tag: str, queue) -> None:
    queue.put(_child_work(tracer, tag))


def _child_exits_abruptly(tracer, write_fd: int) -> None:
    ids = _child_work(tracer, "abrupt")
    os.write(write_fd, ("\n".join(ids) + "\n").encode())
    os._exit(0)  # no atexit, no flush: the items are already in shared memory


def _pool_task(args) -> list[str]:
    tracer, i = args
    return trace_calls(tracer, 5, prefix=f"pool{i}")


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_children_started_by_any_method_deliver(tmp_path, method):
    ctx = multiprocessing.get_context(method)
    with FaultServer() as server, make_engine(server.url, tmp_path) as eng:
        tracer = eng.producer()
        parent_ids = trace_calls(tracer, 5)  # the parent writes first: children must not reuse its slot
        queue = ctx.Queue()
        procs = [ctx.Process(target=_child_process, args=(tracer, f"c{i}", queue)) for i in range(3)]
        for p in procs:
            p.start()
        child_ids = [i for _ in procs for i in queue.get(timeout=60)]
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        parent_ids += trace_calls(tracer, 5)
        assert eng.flush(timeout_s=30)
        assert server.stored_ids(PROJECT) == set(parent_ids + child_ids)
        assert server.duplicate_deliveries() == 0


@pytest.mark.parametrize("maxtasksperchild", [None, 1])
def test_pool_workers_including_recycled_ones_deliver(tmp_path, maxtasksperchild):
    with FaultServer() as server, make_engine(server.url, tmp_path) as eng:
        tracer = eng.producer()
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(2, maxtasksperchild=maxtasksperchild) as pool:
            results = pool.map_async(_pool_task, [(tracer, i) for i in range(8)]).get(60)
        ids = [i for r in results for i in r]
        assert eng.flush(timeout_s=30)
        assert server.stored_ids(PROJECT) == set(ids)


def _pool_task_pid(args) -> tuple[int, list[str]]:
    return os.getpid(), _pool_task(args)


@pytest.mark.parametrize("maxtasksperchild", [None, 1])
def test_pool_tasks_that_each_get_the_tracer_share_their_workers_slot(tmp_path,
                                                                      maxtasksperchild):
    """A tracer passed with every task is unpickled anew in the worker each time: all of
    a process's tracers write into one slot, so many more tasks than slots all deliver."""
    with FaultServer() as server, make_engine(server.url, tmp_path, max_slots=3) as eng:
        tracer = eng.producer()
        ctx = multiprocessing.get_context("fork")
        tasks = 40 if maxtasksperchild is None else 10  # 10 worker processes one after another
        with ctx.Pool(2, maxtasksperchild=maxtasksperchild) as pool:
            results = pool.map_async(_pool_task_pid, [(tracer, i) for i in range(tasks)],
                                     chunksize=1).get(120)
        ids = [i for _, r in results for i in r]
        assert eng.flush(timeout_s=30)
        assert server.stored_ids(PROJECT) == set(ids) and len(ids) == 2 * 5 * tasks
        assert server.duplicate_deliveries() == 0
        pids = {pid for pid, _ in results}
        assert len(pids) <= 2 if maxtasksperchild is None else len(pids) == tasks


def test_tracers_of_one_process_share_a_slot_until_the_last_closes(tmp_path):
    import pickle

    with FaultServer() as server, make_engine(server.url, tmp_path, max_slots=2) as eng:
        first = eng.producer()
        copies = [pickle.loads(pickle.dumps(first)) for _ in range(5)]
        ids = trace_calls(first, 2) + [i for t in copies for i in trace_calls(t, 2)]
        slots = {t._writer.slot for t in (first, *copies)}
        assert len(slots) == 1
        for t in copies:
            t.close()
        with pytest.raises(engine.Closed):
            trace_structs(copies[0], 1)
        assert trace_calls(copies[0], 1) == [None, None]  # tracer.call: not traced, no raise
        ids += trace_calls(first, 2)  # still open: the slot stays
        assert first._writer.slot in slots
        first.close()
        later = pickle.loads(pickle.dumps(first))
        ids += trace_calls(later, 2)  # a new claim after the last close
        later.close()
        assert eng.flush(timeout_s=30)
        assert server.stored_ids(PROJECT) == set(ids) and len(ids) == 4 + 5 * 4 + 4 + 4


def _pool_structs_task(args) -> list[str]:
    tracer, i = args
    return trace_structs(tracer, 30, prefix=f"pool{i}")


@pytest.mark.parametrize("maxtasksperchild", [None, 1])
def test_struct_calls_from_the_owner_and_pool_workers_arrive_complete(tmp_path,
                                                                      maxtasksperchild):
    with FaultServer() as server, make_engine(server.url, tmp_path) as eng:
        tracer = eng.producer()
        ids = trace_structs(tracer, 50, prefix="owner")  # the owner claims a slot first
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(2, maxtasksperchild=maxtasksperchild) as pool:
            results = pool.map_async(_pool_structs_task, [(tracer, i) for i in range(6)]).get(60)
        ids += [i for r in results for i in r]
        assert eng.flush(timeout_s=30)
        assert server.stored_ids(PROJECT) == set(ids) and len(ids) == 50 + 6 * 30
        assert all(server.is_complete(PROJECT, i) for i in ids)
        assert server.duplicate_deliveries() == 0
        assert eng.stats()["dead_letters"] == 0
    stored = server.stored[(PROJECT, ids[-1])]
    assert stored["op_name"] == "pool5.op" and stored["output"]["pid"] != os.getpid()


def test_process_pool_executor_workers_deliver(tmp_path):
    with FaultServer() as server, make_engine(server.url, tmp_path) as eng:
        tracer = eng.producer()
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as pool:
            results = list(pool.map(_pool_task, [(tracer, i) for i in range(4)]))
        ids = [i for r in results for i in r]
        assert eng.flush(timeout_s=30)
        assert server.stored_ids(PROJECT) == set(ids)


def test_a_forked_producer_that_os_exits_right_after_enqueue_loses_nothing(tmp_path):
    with FaultServer() as server, make_engine(server.url, tmp_path) as eng:
        tracer = eng.producer()
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            _child_exits_abruptly(tracer, write_fd)
        os.close(write_fd)
        with os.fdopen(read_fd) as f:
            ids = f.read().split()
        os.waitpid(pid, 0)
        assert len(ids) == 2 * CALLS_PER_CHILD
        assert eng.flush(timeout_s=30)
        assert server.stored_ids(PROJECT) == set(ids)


def test_a_killed_sender_is_restarted_and_nothing_is_lost(tmp_path):
    with FaultServer() as server, make_engine(server.url, tmp_path) as eng:
        tracer = eng.producer()
        ids = trace_calls(tracer, 50)
        eng._sender.kill()
        ids += trace_calls(tracer, 50)
        assert eng.flush(timeout_s=60)
        assert server.stored_ids(PROJECT) == set(ids)
        assert eng.stats()["sender_restarts"] >= 1


def test_a_sender_that_keeps_dying_is_restarted_after_half_a_second_then_twice_as_long(
        tmp_path, monkeypatch):
    """The watchdog's pauses before restarting a dead sender: _SENDER_RESTART_MIN_S, then
    twice the last while it dies within a minute. Before, the pause was doubled before the
    first sleep (1 s, 2 s, 4 s: producers waited twice as long for a sender after a crash)."""
    from engine.producer import _engine

    pauses: list[float] = []

    class _Clock:  # the module's time, its watchdog's sleeps recorded
        def __getattr__(self, name: str) -> object:
            return getattr(time, name)

        @staticmethod
        def sleep(seconds: float) -> None:
            if threading.current_thread().name.startswith("engine-watchdog"):
                pauses.append(seconds)
            time.sleep(seconds)

    monkeypatch.setattr(_engine, "time", _Clock())
    with FaultServer() as server, make_engine(server.url, tmp_path) as eng:
        for kills in range(1, 4):
            killed = eng._sender
            killed.kill()
            assert poll_until(lambda dead=killed: eng._sender is not dead, timeout_s=30)
            assert len(pauses) == kills
        ids = trace_calls(eng.producer(), 10)
        assert eng.flush(timeout_s=30)
        assert server.stored_ids(PROJECT) == set(ids)
    assert pauses == [0.5, 1.0, 2.0]


def test_a_sender_that_starts_after_its_engine_freed_the_ring_set_exits_quietly(tmp_path):
    """A sender started as its engine closed, then held up (SIGSTOP, a loaded machine) until
    the engine had delivered everything and freed the ring set, found its arguments file
    gone: a FileNotFoundError traceback in the program's log (process chaos seed 81). It
    exits 0, saying nothing at the default level."""
    gone = tmp_path / "engine-rings-gone" / "sender.json"
    result = subprocess.run([sys.executable, "-m", "engine.sender", str(gone), "--shard", "1"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr == "" and result.stdout == ""


def test_close_while_a_killed_sender_waits_for_its_restart_still_delivers(tmp_path, monkeypatch):
    """The watchdog restarts a dead sender after a pause (0.5 s, growing while it keeps
    dying); a close() in that pause found no sender and left every record it had not
    acknowledged in shared memory (process chaos seed 13: 774 items, for the next engine
    to recover). close() starts the dead sender at once, and it delivers them."""
    from engine.producer import _engine

    monkeypatch.setattr(_engine, "_SENDER_RESTART_MIN_S", 30.0)  # the pause outlasts the test
    with FaultServer(stall_s=0.5) as server:  # nothing acknowledged before the kill
        eng = make_engine(server.url, tmp_path)
        ids = trace_calls(eng.producer(), 50)
        eng._sender.kill()
        eng._sender.wait()
        server.stall_s = 0.0
        stats = eng.close()
        assert stats["undelivered"] == 0
        assert stats["sender_restarts"] == 1
        assert server.wait_for(lambda: server.stored_ids(PROJECT) == set(ids), timeout_s=30)
        assert not os.path.exists(ring_files.segment_path(eng.spec.shm_name))


def test_a_sender_killed_while_close_waits_for_it_is_started_again_and_delivers(tmp_path):
    """A sender killed after close() asked it to stop (or just before, its death not seen
    yet: process chaos seed 39, 789 items) left what it had not acknowledged in shared
    memory. close() starts it again while its deadline lasts."""
    with FaultServer(stall_s=30.0) as server:  # nothing acknowledged before the kill
        eng = make_engine(server.url, tmp_path)
        ids = trace_calls(eng.producer(), 50)
        closing = concurrent.futures.ThreadPoolExecutor(1)
        stats = closing.submit(eng.close)
        assert poll_until(lambda: eng._control.get("shutdown_request") != 0, timeout_s=10)
        killed = eng._sender
        killed.kill()
        killed.wait()
        server.stall_s = 0.0
        server.release()
        stats = stats.result(timeout=60)
        closing.shutdown()
        assert stats["undelivered"] == 0
        assert stats["sender_restarts"] == 1 and eng._sender is not killed
        assert server.wait_for(lambda: server.stored_ids(PROJECT) == set(ids), timeout_s=30)


_OWNER_SCRIPT = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {root!r})
    from tests.engine.helpers import make_engine, trace_calls
    import pathlib
    eng = make_engine({url!r}, pathlib.Path({tmp!r}))
    tracer = eng.producer()
    ids = trace_calls(tracer, 30)
    print("\\n".join(ids), flush=True)
    how = {how!r}
    if how == "sys.exit":
        sys.exit(0)
    if how == "sigterm":
        print("READY", flush=True)
        time.sleep(120)
""")


@pytest.mark.parametrize("how", ["return", "sys.exit", "sigterm"])
def test_owner_exit_paths_deliver_everything(tmp_path, how):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with FaultServer() as server:
        script = _OWNER_SCRIPT.format(root=root, url=server.url, tmp=str(tmp_path), how=how)
        lines = []
        with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              text=True) as proc:
            for line in proc.stdout:
                if line.strip() == "READY":
                    proc.send_signal(signal.SIGTERM)
                    continue
                lines.append(line.strip())
            assert proc.wait(60) in (0, -signal.SIGTERM)
        assert server.stored_ids(PROJECT) == {x for x in lines if x}


_KILLED_OWNER_SCRIPT = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    from tests.engine.helpers import make_engine, trace_calls
    import pathlib
    eng = make_engine({url!r}, pathlib.Path({tmp!r}))
    ids = trace_calls(eng.producer(), 30)
    print(eng.spec.shm_name, flush=True)
    print("\\n".join(ids), flush=True)
    os.kill(os.getpid(), 9)
""")


def _run_killed_owner(url: str, tmp_path) -> tuple[str, list[str]]:
    """Runs the owner script until it SIGKILLs itself: its ring set's name and call ids."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = _KILLED_OWNER_SCRIPT.format(root=root, url=url, tmp=str(tmp_path))
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                          text=True) as proc:
        shm_name, *ids = [line.strip() for line in proc.stdout if line.strip()]
        assert proc.wait(60) == -signal.SIGKILL
    return shm_name, ids


def test_a_sigkilled_owner_still_gets_its_calls_delivered_and_memory_freed(tmp_path):
    with FaultServer() as server:
        shm_name, ids = _run_killed_owner(server.url, tmp_path)
        assert server.wait_for(lambda: server.stored_ids(PROJECT) == set(ids), timeout_s=60)
        segment = ring_files.segment_path(shm_name)
        deadline = time.monotonic() + 30
        while os.path.exists(segment) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(segment)


def test_close_never_hangs_past_its_deadline_and_dead_letters_the_rest(tmp_path):
    with FaultServer() as server:
        server.down()
        eng = make_engine(server.url, tmp_path, shutdown_timeout_s=1.0, spool_dir="off")
        ids = trace_calls(eng.producer(), 20)
        started = time.monotonic()
        stats = eng.close()
        assert time.monotonic() - started < 15
    assert stats["dead_shutdown"] == len(ids)  # complete calls: one item per call
    assert stats["undelivered"] == 0
    lines = (tmp_path / "dead_letters.jsonl").read_text().splitlines()
    assert len(lines) == len(ids)


_SIGTERM_FORK_SCRIPT = textwrap.dedent("""
    import multiprocessing, os, signal, sys, threading, time
    sys.path.insert(0, {root!r})
    from tests.engine.helpers import make_engine
    import pathlib

    def report(_):
        return signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    def busy_in_c(_):
        return sum(range({loop}))  # seconds inside one C call: no Python handler runs

    with make_engine({url!r}, pathlib.Path({tmp!r})) as eng:
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # the owner's flush
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(2) as pool:
            print("default-in-child", all(pool.map(report, range(4))), flush=True)
            pool.map_async(busy_in_c, range(2))
            time.sleep(0.5)
            began = time.monotonic()
        print("terminated-in", round(time.monotonic() - began, 1), flush=True)
""")


def test_forked_workers_get_sigterm_default_and_pool_terminate_kills_them(tmp_path):
    """The owner's SIGTERM handler (flush, then terminate) is not a forked worker's: it
    owns no engine, and a Python handler cannot run while the worker waits in C, which
    would keep Pool.terminate() waiting for it forever."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with FaultServer() as server:
        script = _SIGTERM_FORK_SCRIPT.format(root=root, url=server.url, tmp=str(tmp_path),
                                             loop=3 * 10**8)  # bounded: ~5 s if not killed
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert lines["default-in-child"] == "True"
    assert float(lines["terminated-in"]) < 2


_SIGTERM_RACE_SCRIPT = textwrap.dedent("""
    import os, signal, sys, time, pathlib
    sys.path.insert(0, {root!r})
    from tests.engine.helpers import make_engine
    survivors = 0
    with make_engine({url!r}, pathlib.Path({tmp!r})) as eng:
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        for _ in range(40):
            pid = os.fork()
            if pid == 0:
                try:
                    time.sleep(5)
                finally:
                    os._exit(0)
            os.kill(pid, signal.SIGTERM)  # at once: races the child's own start-up
            t = time.monotonic()
            while time.monotonic() - t < 2.0 and not os.waitpid(pid, os.WNOHANG)[0]:
                time.sleep(0.001)
            else:
                if time.monotonic() - t >= 2.0:
                    survivors += 1
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
    print("survivors", survivors, flush=True)
""")


def test_a_sigterm_sent_right_after_fork_kills_the_child(tmp_path):
    """What Pool.terminate() does to a worker it is replacing at that moment: a SIGTERM
    arriving before the child has reset its handler must not be lost."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with FaultServer() as server:
        script = _SIGTERM_RACE_SCRIPT.format(root=root, url=server.url, tmp=str(tmp_path))
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["survivors", "0"]


def test_tracers_the_engine_did_not_make_raise_closed_once_it_closes(tmp_path):
    import pickle

    with FaultServer() as server:
        eng = make_engine(server.url, tmp_path)
        made = eng.producer()
        copy = pickle.loads(pickle.dumps(made))  # as a Pool task in the owner would get it
        ids = trace_calls(copy, 2) + trace_structs(copy, 2)
        eng.close()
        assert server.stored_ids(PROJECT) == set(ids)
        with pytest.raises(engine.Closed):
            trace_structs(copy, 1)  # the one-call path
        assert trace_calls(copy, 1) == [None, None]  # tracer.call: not traced, never raised
        with pytest.raises(engine.Closed):
            copy.call_complete({"project_id": PROJECT, "id": engine.wire.uuid7(),
                                "trace_id": engine.wire.uuid7(), "op_name": "op",
                                "started_at": "2026-01-01T00:00:00Z",
                                "ended_at": "2026-01-01T00:00:01Z", "attributes": {},
                                "inputs": {}, "summary": {}})


def test_tracers_made_per_task_in_the_owner_do_not_pile_up(tmp_path):
    import gc

    with FaultServer() as server, make_engine(server.url, tmp_path) as eng:
        ids = []
        for _ in range(20):
            ids += trace_calls(eng.producer(), 1)
        gc.collect()
        from engine.producer._slot import _live_tracers

        assert sum(t._spec == eng._ringset.spec for t in _live_tracers) <= 1
        assert eng.flush(timeout_s=30)
        assert server.stored_ids(PROJECT) == set(ids)


_GATE_SITECUSTOMIZE = textwrap.dedent("""
    # holds a starting sender before any of its code runs, until the test opens the gate
    import os, sys, time
    if "engine.sender" in sys.orig_argv:
        deadline = time.monotonic() + 30
        while not os.path.exists(os.environ["TEST_SENDER_GATE"]) and time.monotonic() < deadline:
            time.sleep(0.01)
""")


def test_an_owner_killed_before_its_sender_starts_leaves_no_orphan_to_take(tmp_path, monkeypatch):
    """The reader lock is handed to the sender at spawn: in the window before the sender
    runs, an owner killed leaves a ring set that another engine's scan must not take for
    an orphan (remove it, or recover it beside the sender about to read it)."""
    from engine.ring import _orphans

    gate_dir, gate = tmp_path / "gate", tmp_path / "gate-open"
    gate_dir.mkdir()
    (gate_dir / "sitecustomize.py").write_text(_GATE_SITECUSTOMIZE)
    monkeypatch.setenv("PYTHONPATH", str(gate_dir))
    monkeypatch.setenv("TEST_SENDER_GATE", str(gate))
    with FaultServer() as server:
        shm_name, ids = _run_killed_owner(server.url, tmp_path)
        # the owner is dead and its sender has not run a line: still, it is being read
        assert not any(orphan.name == shm_name for orphan in _orphans.find_orphans())
        assert os.path.exists(ring_files.segment_path(shm_name))
        gate.touch()
        assert server.wait_for(lambda: server.stored_ids(PROJECT) == set(ids), timeout_s=60)


def _op_worker(args) -> None:
    tracer, barrier, queue = args
    double = tracer.op(lambda x: 2 * x, name="double")
    barrier.wait(30)  # every process tries to claim a slot at once
    began = time.monotonic()
    first = double(1)  # the first traced call claims a slot, or finds none (waits once)
    barrier.wait(30)  # the holders still hold theirs while the others trace on
    values = [first] + [double(i) for i in range(2, 21)]
    elapsed_s = time.monotonic() - began
    slot = tracer._writer.slot if tracer._writer is not None else None
    raised = None
    if slot is None:
        try:
            tracer.call_start({"project_id": PROJECT, "op_name": "direct",
                               "started_at": "2026-12-05T10:00:00Z", "attributes": {},
                               "inputs": {}})  # fmt: skip
        except engine.Closed as exc:
            raised = type(exc).__name__
    barrier.wait(30)  # the holders keep their slots until every process is done
    queue.put((os.getpid(), slot, values, elapsed_s, raised))


def test_processes_beyond_max_slots_do_not_trace_are_counted_and_never_held_up(tmp_path):
    """Four processes, two slots: two trace every call; the two others wait once for a slot
    (max_block_ms), then run their functions untraced with no wait per call (before: each
    traced call waited max_block_ms again, and the calls were lost uncounted); every call
    not traced is counted and said in the sender's exit line; the direct API raises
    NoRingSlot (a Closed)."""
    ctx = multiprocessing.get_context("fork")
    with FaultServer() as server, make_engine(server.url, tmp_path, max_slots=2,
                                              max_block_ms=300) as eng:  # fmt: skip
        tracer = eng.producer()
        barrier, queue = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_op_worker, args=((tracer, barrier, queue),))
                 for _ in range(4)]  # fmt: skip
        for p in procs:
            p.start()
        results = [queue.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        assert eng.flush(timeout_s=30)
        stats = eng.stats()
    assert all(values == [2 * i for i in range(1, 21)] for _, _, values, _, _ in results)
    holders = [r for r in results if r[1] is not None]
    refused = [r for r in results if r[1] is None]
    assert len(holders) == 2 and len(refused) == 2
    assert all(elapsed_s < 0.3 + 2.0 for _, _, _, elapsed_s, _ in refused)  # one wait, not 20
    assert [r[4] for r in refused] == ["NoRingSlot", "NoRingSlot"]
    assert stats["untraced_no_slot"] == 2 * 20
    assert len(server.stored_ids(PROJECT)) == 2 * 20  # every call of the slot holders


def _child_stays_attached(tracer, ids, leave) -> None:
    ids.put(trace_calls(tracer, 3, prefix="stays"))
    leave.wait(60)  # a pooled worker (a Ray worker, a Pool's) holding its slot, idle


def test_a_ring_set_closed_while_producers_stay_attached_is_removed_once_they_exit(tmp_path):
    """The sender stays for attached producers until its deadline, then exits; it left the
    ring set behind for as long as the owner lived (a Ray driver's pooled workers keep their
    slots: 32 MiB in /dev/shm per closed RayEngine), since no scan takes a live owner's."""
    from engine.ring import _orphans

    ctx = multiprocessing.get_context("fork")
    ids, leave = ctx.Queue(), ctx.Event()
    with FaultServer() as server:
        eng = make_engine(server.url, tmp_path, shutdown_timeout_s=1.0)
        segment = ring_files.segment_path(eng.spec.shm_name)
        child = ctx.Process(target=_child_stays_attached, args=(eng.producer(), ids, leave))
        child.start()
        try:
            traced = set(ids.get(timeout=60))
            eng.close()
            deadline = time.monotonic() + 30
            while any(p.poll() is None for p in eng._senders) and time.monotonic() < deadline:
                time.sleep(0.05)  # polling the sender's exit, with a deadline
            assert all(p.poll() is not None for p in eng._senders)
            _orphans.find_orphans()
            assert os.path.exists(segment)  # the child may still write: kept
        finally:
            leave.set()
            child.join(60)
        assert server.stored_ids(PROJECT) == traced
        _orphans.find_orphans()  # the next Engine's (or engine replay's) scan
        assert not os.path.exists(segment)
