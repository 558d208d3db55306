"""``engine.nested``: calls a process-pool task traces nest under the call current where
the task was handed out (fork and spawn pools, a pool made before the call), where
without it each one is a trace of its own."""

from __future__ import annotations

import concurrent.futures
import functools
import multiprocessing
import pickle

import pytest

import engine
from tests.engine.test_generator_ops import _calls
from tests.engine.test_tracer import PROJECT, drain


@pytest.fixture
def eng(tmp_path):
    """The parent and four pool workers each hold a ring slot: room for them (no sender:
    the test reads the records)."""
    with engine.Engine(url="http://127.0.0.1:9", project=PROJECT, start_sender=False,
                       ring_bytes=1 << 20, max_slots=8, max_block_ms=50, shutdown_timeout_s=0,
                       dead_letter_path=str(tmp_path / "dl.jsonl")) as e:
        yield e
        drain(e)  # no ring set left behind


def predict(tracer, row):
    """A task: one traced call; its parent as the worker saw it."""
    with tracer.call("predict", inputs={"row": row}) as call:
        call.output = row * 2
    return call.parent_id


def test_pool_tasks_nest_under_the_call_that_handed_them_out(eng):
    tracer = eng.producer()
    task = functools.partial(predict, tracer)
    spawn = multiprocessing.get_context("spawn")
    # the fork pool is made before the call (a pool kept across evaluations)
    with multiprocessing.get_context("fork").Pool(2) as forked, tracer.call("evaluate") as evaluate:
        plain = forked.map(task, range(4))
        carried = forked.map(engine.nested(task), range(4))
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=spawn) as spawned:
            spawned_parents = list(spawned.map(engine.nested(task), range(4, 8)))
    assert plain == [None] * 4  # why nested exists: the call does not cross processes
    assert carried == [evaluate.id] * 4 and spawned_parents == [evaluate.id] * 4
    predicts = [c for c in _calls(eng) if c["op_name"] == "predict"]
    assert len(predicts) == 12
    under = [c for c in predicts if c.get("parent_id") == evaluate.id]
    assert sorted(c["inputs"]["row"] for c in under) == list(range(8))
    assert {c["trace_id"] for c in under} == {evaluate.trace_id}


def test_nested_without_a_current_call_runs_the_function_as_it_is_and_pickles(eng):
    tracer = eng.producer()
    alone = engine.nested(functools.partial(predict, tracer))
    assert pickle.loads(pickle.dumps(alone))(1) is None
    with tracer.call("evaluate") as evaluate:
        carried = pickle.loads(pickle.dumps(engine.nested(functools.partial(predict, tracer))))
    assert carried.parent.id == evaluate.id and carried.parent.trace_id == evaluate.trace_id
    assert carried(3) == evaluate.id  # run after evaluate ended, anywhere: still its child
    assert engine.current_call() is None  # and the parent is not left current
