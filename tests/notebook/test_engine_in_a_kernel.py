"""The engine in a real Jupyter kernel: cells that trace, an interrupt (the front end's
SIGINT to the kernel) in the middle of a traced loop, a graceful shutdown and a restart while
calls are still on their way. Every call whose start returned in a cell is stored, the
interrupt is the user's KeyboardInterrupt in their cell and nothing of the engine's, and the
next cell traces on.

Each cell prints what it started as a JSON line; the test compares that with what the
server stored.
"""

from __future__ import annotations

import textwrap
import urllib.request

import msgspec
import pytest
from jupyter_client.manager import _ShutdownStatus

from engine.server import serve_subprocess
from tests.faultserver import FaultServer
from tests.notebook.kernel import Cell, Kernel, kernel_env

pytestmark = pytest.mark.integration

CELL_TIMEOUT_S = 30.0  # any execute reply later than this fails the test: the kernel hung
LOOP_BOUND_S = 30.0  # a loop the test interrupts ends by itself after this


def stored_calls(url: str, project: str) -> list[dict]:
    body = msgspec.json.encode({"project_id": project})
    request = urllib.request.Request(url + "/calls/stream_query", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=30) as resp:
        return [msgspec.json.decode(line) for line in resp.read().splitlines()]


def by_op(calls: list[dict], op: str) -> dict[str, dict]:
    return {c["id"]: c for c in calls if c["op_name"].endswith(op)}


def setup_cell(url: str, project: str) -> str:
    return textwrap.dedent(f"""
        import json, time
        import engine

        eng = engine.Engine(url={url!r}, project={project!r})
        tracer = eng.producer()

        @tracer.op
        def predict(x: int) -> int:
            return x + 1
        """)


TRACE_N = textwrap.dedent("""
    ids = []
    for i in range({n}):
        with tracer.call("evaluate", inputs={{"i": i}}) as call:
            ids.append(call.id)
            call.output = predict(i)
    print(json.dumps({{"ids": ids}}))
    """)

# traces until interrupted (or LOOP_BOUND_S): "begun" are the ids of the calls whose start
# returned (the last may not have ended), "done" how many of them ended in the loop
LOOP = textwrap.dedent(f"""
    begun, done = [], 0
    deadline = time.monotonic() + {LOOP_BOUND_S}
    try:
        while time.monotonic() < deadline:
            with tracer.call("step", inputs={{"i": done}}) as call:
                begun.append(call.id)
                call.output = predict(done)
            done += 1
            if done == 300:
                print("LOOPING", flush=True)
    finally:
        print(json.dumps({{"begun": begun, "done": done}}))
    """)


def run_ok(kernel: Kernel, code: str) -> Cell:
    cell = kernel.run(code, CELL_TIMEOUT_S)
    assert cell.status == "ok" and not cell.stderr, cell
    return cell


def interrupt_mid_loop(kernel: Kernel, loop: str) -> Cell:
    """Runs ``loop``, interrupts the kernel once the cell printed LOOPING, returns the cell."""
    msg_id = kernel.submit(loop)
    cell = Cell()
    kernel.wait_output(msg_id, "LOOPING", CELL_TIMEOUT_S, cell)
    kernel.interrupt()
    return kernel.collect(msg_id, CELL_TIMEOUT_S, cell)


def assert_no_engine_trouble(kernel: Kernel, *cells: Cell) -> None:
    """Nothing of the engine's in the cells' stderr, and no traceback or warning in the
    kernel process's own output (where the engine and its sender log)."""
    for cell in cells:
        assert "engine" not in cell.stderr.lower(), cell
    log = kernel.process_log()
    lines = [line for line in log.splitlines()
             if "Traceback" in line or "engine" in line.lower() or "Exception" in line]
    assert not lines, log[-4000:]


def test_calls_traced_in_cells_are_stored_by_a_later_flush_and_at_the_kernels_exit(tmp_path):
    """The setup cell run twice (users re-run cells): the flush asks the second engine; the
    first one, its name rebound, delivers as it goes and closes at the kernel's exit."""
    with serve_subprocess(tmp_path / "t.db") as url, \
            Kernel(tmp_path, kernel_env(tmp_path)) as kernel:
        run_ok(kernel, setup_cell(url, "nb/cells"))
        first = run_ok(kernel, TRACE_N.format(n=400)).last()["ids"]
        run_ok(kernel, setup_cell(url, "nb/cells"))  # the setup cell run again: a second Engine
        second = run_ok(kernel, TRACE_N.format(n=100)).last()["ids"]
        flushed = run_ok(kernel, "print(json.dumps({'flushed': eng.flush(timeout_s=20)}))")
        assert flushed.last() == {"flushed": True}
        assert set(by_op(stored_calls(url, "nb/cells"), "evaluate")) >= set(second)
        kernel.stop()
        assert kernel.manager._shutdown_status is _ShutdownStatus.ShutdownRequest
        calls = stored_calls(url, "nb/cells")
        evaluates, predicts = by_op(calls, "evaluate"), by_op(calls, "predict")
        assert sorted(evaluates) == sorted(first + second)
        assert all(c["ended_at"] and c["exception"] is None for c in evaluates.values())
        assert len(predicts) == 500
        assert {c["parent_id"] for c in predicts.values()} == set(first + second)
        assert_no_engine_trouble(kernel, flushed)


def test_an_interrupted_cell_keeps_every_call_it_started_and_the_next_cell_traces_on(tmp_path):
    with serve_subprocess(tmp_path / "t.db") as url, \
            Kernel(tmp_path, kernel_env(tmp_path)) as kernel:
        run_ok(kernel, setup_cell(url, "nb/interrupted"))
        looped = interrupt_mid_loop(kernel, LOOP)
        assert looped.status == "error" and looped.ename == "KeyboardInterrupt", looped
        # (it lands wherever the loop was, in the engine's code too: still the user's)
        begun, done = looped.last()["begun"], looped.last()["done"]
        assert done >= 300 and len(begun) - done in (0, 1)
        after = run_ok(kernel, TRACE_N.format(n=100)).last()["ids"]
        kernel.stop()  # no flush, no close: the kernel's exit delivers
        # the kernel ended on the shutdown request, within shutdown_wait_time's first half
        assert kernel.manager._shutdown_status is _ShutdownStatus.ShutdownRequest
        calls = stored_calls(url, "nb/interrupted")
    steps = by_op(calls, "step")
    # every call whose start returned is stored; the loop's ended ones ended without error;
    # the one the interrupt landed in (between its start and its end) is stored, its end
    # saying KeyboardInterrupt if its `with` block ended -- or no error, when the interrupt
    # came after its block ended and before `done += 1` (seen once in a full run); at most
    # one call more, whose start returned just as the interrupt came (before the cell could
    # note its id)
    assert set(begun) <= set(steps) and len(steps) - len(begun) in (0, 1), (len(begun), len(steps))
    assert all(steps[i]["ended_at"] and steps[i]["exception"] is None for i in begun[:done])
    for call_id in set(steps) - set(begun[:done]):
        step = steps[call_id]
        assert (step["ended_at"] is None or "KeyboardInterrupt" in (step["exception"] or "")
                or (call_id == begun[-1] and len(begun) == done + 1
                    and step["exception"] is None)), step
    assert sorted(by_op(calls, "evaluate")) == sorted(after)
    assert len(by_op(calls, "predict")) >= done + len(after)
    assert_no_engine_trouble(kernel)


def test_a_restart_while_calls_are_queued_for_a_slow_server_loses_none(tmp_path):
    # every request waits 4 s at the server: none of the first kernel's calls is acknowledged
    # when the restart asks it to shut down, so its exit (the engine's close, delivering) is
    # still waiting when jupyter_client sends SIGTERM (half of shutdown_wait_time, 2.5 s);
    # its sender, in a session of its own, delivers them after the kernel is gone
    with FaultServer(stall_s=4.0) as server, \
            Kernel(tmp_path, kernel_env(tmp_path)) as kernel:
        run_ok(kernel, setup_cell(server.url, "nb/restarted"))
        before = run_ok(kernel, TRACE_N.format(n=3000)).last()["ids"]
        stats = run_ok(kernel, "print(json.dumps({'acked': eng.stats()['items_acked']}))")
        assert stats.last() == {"acked": 0}
        kernel.restart()
        assert kernel.manager._shutdown_status is _ShutdownStatus.SigtermRequest
        run_ok(kernel, setup_cell(server.url, "nb/restarted"))
        after = run_ok(kernel, TRACE_N.format(n=100)).last()["ids"]
        run_ok(kernel, "assert eng.flush(timeout_s=25)")
        expected = 2 * (len(before) + len(after))  # each evaluate with its predict
        assert server.wait_for(
            lambda: sum(server.is_complete("nb/restarted", i) for (_, i) in server.stored)
            >= expected, timeout_s=40), (len(server.stored), expected)
        kernel.stop()
    evaluates = {cid for (_, cid), call in server.snapshot().items()
                 if call.get("op_name", "").endswith("evaluate")}
    assert evaluates == set(before) | set(after)
    assert len(server.stored) == expected
