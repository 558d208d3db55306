"""Long-lived programs: engines opened per job, threads per request, recycled pool workers,
asyncio tasks by the ten thousand. After a warm-up, doing it again and again more must
not grow what the process holds (fds, threads, children, mappings of ring segments, ring
files: ``tests/resources.py``) nor its Python objects; every call is delivered.

The figures at scale (200 engines, 12,000 threads, 300 recycled workers, 50,000 tasks) are
in ``docs/guarantees.md``, "Long-running programs"; these tests run the same loops small.
``CHURN_SCALE=N`` runs each loop after the warm-up N times longer.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import threading
import time
import weakref

import pytest

import engine
from engine.server._subprocess import spawn_server, stop_server
from tests import resources
from tests.engine.helpers import PROJECT, make_engine, trace_calls, trace_structs
from tests.faultserver import LOOP_NAMES, FaultServer, run_on
from tests.pipeline import poll_until

pytestmark = pytest.mark.integration
SCALE = int(os.environ.get("CHURN_SCALE", "1"))


def _ring_mapped(shm_name: str) -> bool:
    with open("/proc/self/maps") as f:
        return any(shm_name in line for line in f)


def test_a_closed_engine_unmaps_its_ring_set_and_can_be_freed(tmp_path):
    """close() unmaps the segment: a removed segment's memory (16 MiB reserved per producer
    ring by default) is freed only once no process maps it; before, every engine a program
    opened and closed kept its segment mapped, and itself alive (its atexit hook), until
    the program ended."""
    with FaultServer() as server:
        eng = make_engine(server.url, tmp_path)
        ids = trace_calls(eng.producer(), 3)
        name = eng.spec.shm_name
        assert _ring_mapped(name)
        eng.close()
        assert not _ring_mapped(name)
        assert server.stored_ids(PROJECT) == set(ids)
        gone = weakref.ref(eng)
        del eng
        gc.collect()
        assert gone() is None


def _settled(before: dict[str, int], timeout_s: float = 30.0) -> dict[str, int]:
    """What this process holds once it is back to ``before`` (or after ``timeout_s``): a
    sender still exiting when close() returned (it leaves one that takes over a second,
    under load) is waited for by its watchdog thread, which then ends too."""
    poll_until(lambda: not resources.grown(before, resources.held(sockets=False)), timeout_s)
    return resources.held(sockets=False)


def _one_job(url, tmp_path, job: int, ids: list[str]) -> None:
    """A job as programs run them: an engine of its own, a few calls, closed (by the with
    block, or by close())."""
    if job % 2:
        with make_engine(url, tmp_path) as eng:
            ids += trace_calls(eng.producer(), 2, prefix=f"job{job}")
    else:
        eng = make_engine(url, tmp_path)
        ids += trace_calls(eng.producer(), 2, prefix=f"job{job}")
        eng.close()


def test_engines_opened_and_closed_one_after_another_hold_nothing_after(tmp_path):
    with FaultServer() as server:
        ids: list[str] = []
        for job in range(2):  # warm-up: the server's connections, lazy imports
            _one_job(server.url, tmp_path, job, ids)
        before = resources.held(sockets=False)  # the server's connections are in this process
        for job in range(2, 2 + 4 * SCALE):
            _one_job(server.url, tmp_path, job, ids)
        after = _settled(before)
        assert resources.grown(before, after) == {}, (before, after)
        # none of these engines' senders, mappings or ring files is left (the suite's worker
        # may hold other tests' own: compared with before, not with zero)
        assert all(after[k] <= before[k] for k in ("children", "ring_mappings", "ring_files")), (
            before, after)
        assert server.stored_ids(PROJECT) == set(ids) and len(ids) == (2 + 4 * SCALE) * 4
        assert server.duplicate_deliveries() == 0


@pytest.fixture(scope="module")
def count_server():
    """``engine serve --store count`` in a process of its own: it validates and counts the
    calls and keeps none, so this process's objects are the engine's and the test's only
    (an in-process server keeps every call it stores). Delivery is then what the server
    acknowledged (``_acknowledged_all``)."""
    proc, url = spawn_server(store="count")
    try:
        yield url
    finally:
        stop_server(proc)


def _acknowledged_all(eng, calls: int) -> bool:
    """The server acknowledged every call: one item each, two (its start, then its end)
    for a call whose start went before its end (``eager_starts``); nothing persisted."""
    stats = eng.stats()
    return (stats["items_acked"] == calls + stats["eager_starts"]
            and stats["dead_letters"] == stats["spooled_items"] == 0
            and stats["ring"]["records_released"] == stats["ring"]["records_written"] == 2 * calls)


def _ring_doorbell_once(eng, tracer, trace_one) -> int:
    """Warm-up: a write that finds the sender asleep opens this process's doorbell FIFO
    (one fd, kept); once everything is delivered the sender sleeps, so trace after a flush
    until one has. Returns how many times it traced."""
    traced, deadline = 0, time.monotonic() + 30
    while tracer._writer._doorbell_fd < 0 and time.monotonic() < deadline:
        assert eng.flush(timeout_s=30)
        trace_one()
        traced += 1
    return traced


def _python_objects() -> int:
    gc.collect()
    return len(gc.get_objects())


def _traced_task(tracer, predict, i: int, ids: list[str], lock: threading.Lock) -> None:
    """A few calls through each of the three APIs: ``tracer.call``, ``@tracer.op``, the
    direct ``call_start`` / ``call_end``."""
    with tracer.call("task", inputs={"i": i}) as call:
        predict(i)
    mine = [call.id, *trace_structs(tracer, 1, prefix="direct")]
    with lock:
        ids += mine


@pytest.mark.parametrize("threads", ["thread-per-task", "pool-per-batch"])
def test_short_lived_threads_leave_no_per_thread_state(tmp_path, count_server, threads):
    """Per-thread state (thread-locals, counters, the current call) goes with its thread:
    after a warm-up, 1,500 more threads (one per task, or a pool of 8 made and shut down per
    batch of 100) grow neither what the process holds nor its Python objects."""
    with make_engine(count_server, tmp_path) as eng:
        tracer, ids, lock = eng.producer(), [], threading.Lock()

        @tracer.op
        def predict(x):
            return x + 1

        def batch(start: int) -> None:
            if threads == "thread-per-task":
                started = [threading.Thread(target=_traced_task, args=(tracer, predict, i, ids, lock))
                           for i in range(start, start + 100)]
                for t in started:
                    t.start()
                for t in started:
                    t.join()
            else:
                with engine.ThreadPoolExecutor(8) as pool:
                    list(pool.map(lambda i: _traced_task(tracer, predict, i, ids, lock),
                                  range(start, start + 100)))

        for start in range(0, 500, 100):
            batch(start)
        warm = iter(range(10**6, 2 * 10**6))
        extra = 3 * _ring_doorbell_once(
            eng, tracer, lambda: _traced_task(tracer, predict, next(warm), [], lock))
        # the control block, which a write that finds the ring full maps to count its wait
        # (one fd, one mapping, kept): a loaded CI run's sender fell behind mid-test
        assert tracer.settle(timeout_s=30)
        # sockets left out: the suite's worker process holds other tests' servers and
        # clients, whose connections come and go beside this test
        before = resources.held(sockets=False)
        tasks = 500
        grown_objects = None
        for _ in range(2):  # a second round only if the first grew: other tests' threads in
            objects = _python_objects()  # the worker allocate too, a leak grows every round
            for start in range(tasks, tasks + 1500 * SCALE, 100):
                batch(start)
            tasks += 1500 * SCALE
            grown = _python_objects() - objects  # (ids are str: not among them)
            grown_objects = grown if grown_objects is None else min(grown_objects, grown)
            if grown_objects < 100:
                break
        after = resources.held(sockets=False)
        assert eng.flush(timeout_s=30)
        assert len(set(ids)) == 2 * tasks and _acknowledged_all(eng, 3 * tasks + extra)
    assert resources.grown(before, after) == {}, (before, after)
    assert grown_objects < 100, grown_objects


def _pool_task(args) -> list[str]:
    tracer, i = args
    return trace_calls(tracer, 1, prefix=f"task{i}")


@pytest.mark.parametrize("method", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_recycled_pool_workers_give_their_slots_back_and_leave_nothing(tmp_path, method):
    """Pool(maxtasksperchild=1), the tracer passed with every task: each task is a new
    worker process that claims a ring slot; with 4 slots, 3 taken by the owner and the
    two workers at a time, every later worker gets a slot the sender freed. The parent's
    fds, children and ring files stay as they were after the first pool."""
    ctx = multiprocessing.get_context(method)
    tasks = (4 if method == "spawn" else 20) * SCALE  # a spawned worker starts Python anew
    with FaultServer() as server, make_engine(server.url, tmp_path, max_slots=4) as eng:
        tracer = eng.producer()
        ids = trace_calls(tracer, 1)

        def run_pool(first: int) -> None:
            with ctx.Pool(2, maxtasksperchild=1) as pool:
                results = pool.map_async(_pool_task, [(tracer, first + i) for i in range(tasks)],
                                         chunksize=1).get(120)
            ids.extend(i for r in results for i in r)

        run_pool(0)
        before = resources.held(sockets=False)  # the server's connections are in this process
        run_pool(tasks)
        run_pool(2 * tasks)
        after = _settled(before)
        assert eng.flush(timeout_s=30)
        assert server.stored_ids(PROJECT) == set(ids) and len(ids) == 2 + 3 * tasks * 2
        assert server.duplicate_deliveries() == 0
        claims = sum(s["times_claimed"] for s in eng.stats()["ring"]["slots"])
    assert claims == 1 + 3 * tasks  # the owner once, every worker once: 4 slots, reused
    assert resources.grown(before, after) == {}, (before, after)


@pytest.mark.parametrize("loop_name", LOOP_NAMES)
def test_async_ops_in_thousands_of_tasks_leave_no_state_behind(tmp_path, count_server,
                                                                loop_name):
    """Each asyncio task runs in a copy of the context: the current call set by an async
    op goes with its task. After a warm-up, 4,000 more tasks (waves of 500) grow no Python
    objects; every call is delivered."""
    with make_engine(count_server, tmp_path) as eng:
        tracer = eng.producer()

        @tracer.op
        async def predict(x):
            await asyncio.sleep(0)
            return x + 1

        @tracer.op
        async def row(i):
            return await predict(i)

        async def waves(first: int, count: int) -> None:
            for start in range(first, first + count, 500):
                await asyncio.gather(*(asyncio.create_task(row(i)) for i in range(start, start + 500)))
            assert engine.current_call() is None

        async def scenario() -> tuple[int, int, int]:
            await waves(0, 1000)
            # no task waits meanwhile: blocking the loop in flush() holds nothing up
            extra = _ring_doorbell_once(eng, tracer, lambda: trace_structs(tracer, 1))
            made, grown_objects = 1000, None
            for _ in range(2):  # a second round only if the first grew: other tests'
                objects = _python_objects()  # threads in the worker (a Ray test's left in
                await waves(made, 4000 * SCALE)  # it, seen in CI) allocate too; a leak
                made += 4000 * SCALE  # grows every round
                grown = _python_objects() - objects
                grown_objects = grown if grown_objects is None else min(grown_objects, grown)
                if grown_objects < 100:
                    break
            return extra, made, grown_objects

        extra, made, grown_objects = run_on(loop_name, scenario())
        assert eng.flush(timeout_s=60)
        assert _acknowledged_all(eng, 2 * made + extra)
    assert grown_objects < 100, grown_objects
