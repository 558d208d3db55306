"""``engine.ThreadPoolExecutor``: calls traced in its tasks nest under the call that
submitted them, as in asyncio tasks; the stdlib's pool starts each task without a call."""

from __future__ import annotations

import concurrent.futures

import engine
from tests.engine.test_generator_ops import _calls
from tests.engine.test_tracer import eng  # noqa: F401 -- the fixture


def test_tasks_of_engines_thread_pool_nest_under_the_call_that_submitted_them(eng):  # noqa: F811
    """``engine.ThreadPoolExecutor``: ``pool.map(predict, rows)`` inside ``evaluate`` puts
    every predict under evaluate; with the stdlib's pool each one is a trace of its own."""
    tracer = eng.producer()

    @tracer.op
    def predict(row):
        return engine.current_call().parent_id

    with tracer.call("evaluate") as evaluate:
        with engine.ThreadPoolExecutor(4) as pool:
            ours = list(pool.map(predict, range(8)))
            submitted = pool.submit(predict, 99).result()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            stdlib = list(pool.map(predict, range(8)))
    assert ours == [evaluate.id] * 8 and submitted == evaluate.id
    assert stdlib == [None] * 8  # why the engine's pool exists
    calls = _calls(eng)
    predicts = [c for c in calls if c["op_name"].endswith("predict")]
    nested = [c for c in predicts if c.get("parent_id") == evaluate.id]
    assert len(nested) == 9 and {c["trace_id"] for c in nested} == {evaluate.trace_id}
