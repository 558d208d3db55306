"""weave through the engine (``ENGINE_WEAVE=1``) in a real Jupyter kernel: ``weave.init`` in
one cell, ``@weave.op`` calls in the next ones, an interrupt in the middle of an eval loop,
top-level ``await`` of an async op (ipykernel runs such cells in its asyncio loop), then the
kernel's shutdown: every call the cells finished is stored."""

from __future__ import annotations

import textwrap

import pytest
from jupyter_client.manager import _ShutdownStatus

from engine.server import serve_subprocess
from tests.notebook.kernel import Kernel, kernel_env
from tests.notebook.test_engine_in_a_kernel import (
    CELL_TIMEOUT_S,
    assert_no_engine_trouble,
    interrupt_mid_loop,
    run_ok,
    stored_calls,
)

pytestmark = [pytest.mark.integration, pytest.mark.peers]
pytest.importorskip("weave")


def weave_kernel_env(tmp_path, url: str) -> dict[str, str]:
    return kernel_env(
        tmp_path, ENGINE_WEAVE="1", WF_TRACE_SERVER_URL=url, WANDB_BASE_URL=url,
        WANDB_API_KEY="0123456789abcdef0123456789abcdef01234567",
        WEAVE_PRINT_CALL_LINK="false", WANDB_ERROR_REPORTING="false",
        NO_PROXY="127.0.0.1,localhost")


def init_cell(project: str) -> str:
    return textwrap.dedent(f"""
        import asyncio, json, time
        import weave

        client = weave.init({project!r})

        @weave.op
        def score(x: int) -> dict:
            return {{"ok": x % 3 == 0}}

        @weave.op
        def predict(x: int) -> int:
            score(x)
            return x + 1

        @weave.op
        async def apredict(x: int) -> int:
            await asyncio.sleep(0)
            return x + 1
        """)


WEAVE_LOOP = textwrap.dedent("""
    done = 0
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            predict(done)
            done += 1
            if done == 150:
                print("LOOPING", flush=True)
    finally:
        print(json.dumps({"done": done}))
    """)


def why_not_interrupted(kernel: Kernel) -> str:
    """For an interrupt that did not take: what the SIGINT guard last did in the kernel
    (``_weave_sigint.history``), its handler and tracer now, and the kernel's own output."""
    state = kernel.run(textwrap.dedent("""
        import signal, sys, time
        from engine.integrations import _weave_sigint as guard
        print(time.monotonic(), list(guard.history), guard._get_handler(signal.SIGINT),
              sys.gettrace())
        """), CELL_TIMEOUT_S)
    return f"{state.stdout}{state.stderr}\nkernel: {kernel.process_log()[-3000:]}"


def ended_inputs(calls: list[dict], op: str) -> list[int]:
    return sorted(c["inputs"]["x"] for c in calls
                  if f"/op/{op}:" in c["op_name"] and c["ended_at"])


def test_weave_ops_in_cells_interrupted_and_awaited_are_all_stored_at_shutdown(tmp_path):
    with serve_subprocess(tmp_path / "t.db") as url, \
            Kernel(tmp_path, weave_kernel_env(tmp_path, url)) as kernel:
        # the README's line before weave.init, in a kernel that has ENGINE_WEAVE=1 too
        run_ok(kernel, "import engine.integrations.weave as w\nassert w.install()")
        kernel.run(init_cell("nb/weave"), CELL_TIMEOUT_S)  # weave says who is logged in
        looped = interrupt_mid_loop(kernel, WEAVE_LOOP)
        # the user's KeyboardInterrupt. Now and then IPython fails to format its traceback
        # and prints the plain one instead ("Unexpected exception formatting exception"):
        # IPython's own, ipython/ipython#13598 -- on Python 3.11 a Ctrl-C that lands as a
        # function starts leaves a frame with no line number, which IPython's formatter
        # asserts against (seen here 1 of 12 interrupts: the plain traceback showed the
        # interrupt raised by Python's default handler in typing.py at "line None", not
        # by a deferral of the guard's), with or without the engine
        assert looped.status == "error" and (
            looped.ename == "KeyboardInterrupt"
            or ("Unexpected exception formatting exception" in looped.stdout
                and "KeyboardInterrupt" in looped.stdout + looped.stderr)), \
            (looped, why_not_interrupted(kernel))
        done = looped.last()["done"]
        assert done >= 150
        run_ok(kernel, "for i in range(1000, 1100):\n    predict(i)")
        awaited = run_ok(kernel, textwrap.dedent("""
            results = await asyncio.gather(*(apredict(i) for i in range(2000, 2050)))
            print(json.dumps({"n": len(results)}))
            """))
        assert awaited.last() == {"n": 50}
        kernel.stop()  # no flush: the kernel's exit hands weave's calls over and delivers
        assert kernel.manager._shutdown_status is _ShutdownStatus.ShutdownRequest
        calls = stored_calls(url, "nb/weave")
    predicts = ended_inputs(calls, "predict")
    # every predict the loop finished, none twice, and the 100 of the next cell; the one the
    # interrupt landed in is stored at most (ended, with the KeyboardInterrupt, if it ran)
    assert predicts[:done] == list(range(done)), (done, len(predicts))
    assert predicts[-100:] == list(range(1000, 1100))
    assert len(predicts) - done - 100 in (0, 1)
    assert len(ended_inputs(calls, "score")) >= done + 100
    assert ended_inputs(calls, "apredict") == list(range(2000, 2050))
    assert_no_engine_trouble(kernel)


# Ctrl-C landing in the standard library's thread synchronisation right after a lock was
# taken (as it can inside weave's hand-off to its thread pool): a lock whose taking is
# followed, in C, by a SIGINT to this process, so that the signal is handled in
# Condition.__enter__ (threading.py) with the lock held. Unguarded, the KeyboardInterrupt
# leaves it there and the lock stays held; with the guard, it is raised at the cell's next
# line, inside the `with` block, whose end gives the lock back.
INTERRUPTED_IN_THE_HAND_OFF = textwrap.dedent("""
    import functools, operator, signal, threading, types
    real = threading.Lock()
    take_then_sigint = functools.partial(all, map(operator.methodcaller("__call__"), [
        real.acquire, functools.partial(signal.raise_signal, signal.SIGINT)]))
    cond = threading.Condition(types.SimpleNamespace(
        __enter__=take_then_sigint, __exit__=lambda *exc: real.release(),
        acquire=real.acquire, release=real.release))
    with cond:
        print("inside")
    """)


def test_ctrl_c_inside_the_hand_off_leaves_no_lock_held_in_any_cell(tmp_path):
    with serve_subprocess(tmp_path / "t.db") as url, \
            Kernel(tmp_path, weave_kernel_env(tmp_path, url)) as kernel:
        kernel.run(init_cell("nb/guard"), CELL_TIMEOUT_S)
        kernel.run(init_cell("nb/guard"), CELL_TIMEOUT_S)  # re-run: weave.init again
        for _ in range(2):  # cells after the one that installed the integration
            cell = kernel.run(INTERRUPTED_IN_THE_HAND_OFF, CELL_TIMEOUT_S)
            assert cell.ename == "KeyboardInterrupt", cell
            held = run_ok(kernel, "print(json.dumps({'held': real.locked()}))")
            assert held.last() == {"held": False}, cell.traceback
        run_ok(kernel, "for i in range(20):\n    predict(i)")
        kernel.stop()
        calls = stored_calls(url, "nb/guard")
    assert ended_inputs(calls, "predict") == list(range(20))
