"""weave 0.54.0 in ``spawn`` Pool workers that call ``weave.init`` themselves (CUDA code,
macOS, ``ProcessPoolExecutor``): with the integration their calls go into the parent's
engine -- one sender process for the whole tree, not one per worker -- and every call is
stored. A worker whose owner is gone starts an engine of its own."""

import json
import sys
import textwrap

import pytest

from engine.server import serve_subprocess
from tests.integrations._weaves import VERSIONS, weave_python
from tests.integrations.test_weave_integration import _run_program, _stored_calls, _weave_env

pytestmark = [pytest.mark.peers, pytest.mark.integration]

WORKERS, TASKS, CALLS_PER_TASK = 3, 3, 40
# each worker: weave.init in the Pool's initializer, all of them tracing together
_WORKER = textwrap.dedent(
    """
    import json, multiprocessing, os, sys
    import engine.integrations.weave
    engine.integrations.weave.install()
    import weave

    def start(project, barrier):
        global together
        together = barrier
        weave.init(project)

    @weave.op
    def predict(x: int) -> int:
        return x + 1
    """
)
_PROGRAM = _WORKER + textwrap.dedent(
    """
    def senders_of(pid):
        found = []
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read()
            except (OSError, ValueError):
                continue
            if ppid == pid and b"engine.sender" in cmdline:
                found.append(int(entry))
        return found

    def task(i):
        together.wait(timeout=60)  # one task per worker: every worker traces
        for j in range(int(sys.argv[3])):
            predict(i * 1000 + j)
        weave.get_client().flush()  # the integration waits for this worker's calls
        own = engine.integrations.weave.installed_engine() is not None
        return {"pid": os.getpid(), "own_engine": own, "senders": senders_of(os.getpid())}

    if __name__ == "__main__":
        project, workers, tasks = sys.argv[1], int(sys.argv[2]), int(sys.argv[4])
        if sys.argv[5] == "owner":
            weave.init(project)  # the parent's engine: workers write into it
        ctx = multiprocessing.get_context("spawn")
        barrier = ctx.Barrier(workers)
        with ctx.Pool(workers, initializer=start, initargs=(project, barrier)) as pool:
            results = pool.map(task, range(tasks))
        print(json.dumps({"results": results, "parent_senders": len(senders_of(os.getpid()))}))
    """
)


def _run(tmp_path, url, project, mode, extra_env=None, python=sys.executable):
    program = tmp_path / "spawn.py"
    program.write_text(_PROGRAM)
    env = {**_weave_env(url, str(tmp_path), enable_env=False), **(extra_env or {})}
    result = _run_program([python, str(program), project, str(WORKERS),
                           str(CALLS_PER_TASK), str(TASKS), mode], env, timeout_s=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1]), _stored_calls(url, project, "predict")


def _assert_every_call(calls):
    want = sorted(i * 1000 + j for i in range(TASKS) for j in range(CALLS_PER_TASK))
    assert sorted(c["inputs"]["x"] for c in calls) == want
    assert len({c["id"] for c in calls}) == len(want)
    assert all(c["output"] == c["inputs"]["x"] + 1 for c in calls)


@VERSIONS
def test_spawned_workers_write_into_the_parents_engine(tmp_path, weave_minor):
    with serve_subprocess(tmp_path / "traces.db") as url:
        report, calls = _run(tmp_path, url, "ent/spawn", "owner",
                             python=weave_python(weave_minor))
    results = report["results"]
    assert len({r["pid"] for r in results}) == WORKERS  # every worker traced
    assert not any(r["own_engine"] or r["senders"] for r in results), results
    assert report["parent_senders"] == 1  # the parent's one sender delivered everything
    _assert_every_call(calls)


def test_without_an_owner_each_spawned_worker_starts_its_own_engine(tmp_path):
    """The parent never called weave.init: no engine to share; each worker has its own
    (as before), and a stale $ENGINE_WEAVE_OWNER (a dead process) is not followed."""
    with serve_subprocess(tmp_path / "traces.db") as url:
        stale = json.dumps({  # well formed, for this URL, of a process long gone
            "pid": 2**22 + 12345, "start_ticks": 1, "url": url, "flush_s": 1.0,
            "spec": {"shm_name": "gone", "ring_bytes": 1 << 20, "max_slots": 4,
                     "doorbell_path": "/nonexistent/bell", "lock_path": "/nonexistent/lock"},
            "settings": {"project": "p/q", "max_block_ms": 10, "on_full": "drop",
                         "strict": False, "max_request_bytes": 1 << 20}})  # fmt: skip
        report, calls = _run(tmp_path, url, "ent/spawn-own", "no-owner",
                             {"ENGINE_WEAVE_OWNER": stale})
    assert len({r["pid"] for r in report["results"]}) == WORKERS
    assert all(r["own_engine"] and len(r["senders"]) == 1 for r in report["results"])
    assert report["parent_senders"] == 0
    _assert_every_call(calls)


_TERMINATED_PROGRAM = _WORKER + textwrap.dedent(
    """
    @weave.op
    def report(i: int) -> dict:  # a large output: weave's thread turns it into JSON later
        return {f"k{k}": [k, str(k)] for k in range(int(sys.argv[4]))}

    def task(i):
        together.wait(timeout=60)  # one task per worker
        for j in range(int(sys.argv[3])):
            predict(i * 1000 + j)
        report(i)
        return os.getpid()  # no flush: the Pool's end terminates the worker right away

    if __name__ == "__main__":
        project, workers = sys.argv[1], int(sys.argv[2])
        weave.init(project)
        ctx = multiprocessing.get_context("spawn")
        barrier = ctx.Barrier(workers)
        with ctx.Pool(workers, initializer=start, initargs=(project, barrier)) as pool:
            pids = pool.map(task, range(workers))
        print(json.dumps({"pids": pids}))  # the with block's end: Pool.terminate()
    """
)


@VERSIONS
def test_spawned_workers_terminated_by_the_pools_end_keep_every_finished_call(
        tmp_path, weave_minor):  # fmt: skip
    """``with Pool(...)`` ends with ``Pool.terminate()``: SIGTERM, at once, to workers whose
    last calls weave's threads still held (the owner's SIGTERM handler, which waits for them,
    is not a spawned worker's). Each worker's deferred work now runs in the op's thread, so
    every call it finished is in the ring before its task returns (before: the large last
    output of each worker, still being turned into JSON, and what was queued behind it, lost)."""
    program = tmp_path / "terminated.py"
    program.write_text(_TERMINATED_PROGRAM)
    calls_per_task, report_keys = 50, 20_000
    with serve_subprocess(tmp_path / "traces.db") as url:
        result = _run_program([weave_python(weave_minor), str(program), "ent/spawn-term",
                               str(WORKERS), str(calls_per_task), str(report_keys)],
                              _weave_env(url, str(tmp_path), enable_env=False), timeout_s=120)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert len(set(json.loads(result.stdout.splitlines()[-1])["pids"])) == WORKERS
        predicts = _stored_calls(url, "ent/spawn-term", "predict")
        reports = _stored_calls(url, "ent/spawn-term", "report")
    want = sorted(i * 1000 + j for i in range(WORKERS) for j in range(calls_per_task))
    assert sorted(c["inputs"]["x"] for c in predicts if c["ended_at"]) == want
    assert sorted(c["inputs"]["i"] for c in reports if c["ended_at"]) == list(range(WORKERS))
    assert all(len(c["output"]) == report_keys for c in reports)
