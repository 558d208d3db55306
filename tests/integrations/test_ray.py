"""engine.integrations.ray on a real 3-node Ray cluster on this machine (head + 2 nodes,
``ray.cluster_utils.Cluster``), delivering to a real ``engine serve``.

Tasks are pinned with custom resources (``head``, ``n1``, ``n2``); every node has 1 CPU and
a 100 MB object store, all on 127.0.0.1. One cluster for the module.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import urllib.request
from pathlib import Path

import msgspec
import pytest

from tests.integrations._rays import Cluster, loopback_ray, ray  # skips without Ray

# isort: split
import engine.integrations.ray as engine_ray
from engine.server import serve_subprocess

pytestmark = [pytest.mark.ray, pytest.mark.integration, pytest.mark.timeout(300)]

PROJECT = "ray-entity/ray-project"
NODES = ("head", "n1", "n2")
# a test's engine is flushed or closed within its body: the teardown's close has nothing to
# deliver, and each sender it leaves serving idle workers ends by then (tests/ring_leaks.py)
_CLOSE_S = 2.0
_NODE_ARGS = dict(num_cpus=1, object_store_memory=100 << 20, node_ip_address="127.0.0.1")


@pytest.fixture(scope="module")
def cluster():
    with loopback_ray("ray-engine-") as temp_dir:
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers lack tests/
        nodes = Cluster(initialize_head=True, head_node_args=dict(
            _NODE_ARGS, resources={"head": 10}, include_dashboard=False, temp_dir=temp_dir))
        try:
            for name in NODES[1:]:
                nodes.add_node(**_NODE_ARGS, resources={name: 10})
            ray.init(address=nodes.address, log_to_driver=False)
            assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
            yield nodes
        finally:
            ray.shutdown()
            nodes.shutdown()


@pytest.fixture
def server(tmp_path):
    with serve_subprocess(tmp_path / "traces.db") as url:
        yield url


@pytest.fixture
def make_engine(cluster, server, tmp_path):
    made = []

    def make(**overrides):
        settings = dict(project=PROJECT, compression="none", linger_ms=5, backoff_initial_ms=10,
                        backoff_max_ms=200, shutdown_timeout_s=20.0, ring_bytes=1 << 20,
                        max_slots=16, dead_letter_path=str(tmp_path / "dead.jsonl"))
        settings.update(overrides)
        eng = engine_ray.RayEngine(url=server, **settings)
        made.append(eng)
        return eng

    yield make
    for eng in made:  # Ray's pooled workers keep their slots: the senders stay for them till
        eng.close(timeout_s=_CLOSE_S)  # the deadline, delivering to this test's server


def stored_calls(url: str) -> list[dict]:
    request = urllib.request.Request(url + "/calls/stream_query",
                                     data=msgspec.json.encode({"project_id": PROJECT}))
    with urllib.request.urlopen(request, timeout=30) as resp:
        return [msgspec.json.decode(line) for line in resp.read().splitlines()]


def wait_stored(url: str, count: int, timeout_s: float = 60.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        calls = stored_calls(url)
        if len(calls) >= count or time.monotonic() > deadline:
            return calls
        time.sleep(0.2)


def on(node: str) -> dict:
    return {"resources": {node: 1}}


# -- the work the tasks and actors do ------------------------------------------------------


@ray.remote
def score_task(tracer, i: int) -> tuple[str, int]:
    """One call with one child: 2 calls."""
    with tracer.call("score", inputs={"i": i}) as call:
        with tracer.call("score.child", inputs={"i": i}) as child:
            child.output = i * 2
        call.output = {"node": ray.get_runtime_context().get_node_id()}
    return ray.get_runtime_context().get_node_id(), os.getpid()


@ray.remote
def run_op(op, i: int) -> int:
    """An op decorated in the driver, called in a task."""
    return op(i)


@ray.remote(num_cpus=0)
class Scorer:
    def __init__(self, tracer) -> None:
        self.tracer = tracer

        @tracer.op
        def judge(i: int) -> int:
            return i + 1

        self.judge = judge

    def score(self, tracer, i: int) -> str:
        """The tracer comes with the call: its calls nest under the caller's call."""
        with tracer.call("actor.score", inputs={"i": i}) as call:
            call.output = self.judge(i)
        return ray.get_runtime_context().get_node_id()


@ray.remote
def call_with_inputs(tracer, inputs) -> str:
    """tracer.call with whatever ``inputs`` is; the error's text if it raised."""
    try:
        with tracer.call("checked", inputs=inputs):
            pass
    except TypeError as exc:
        return str(exc)
    return "traced"


class _Scores:
    """Ops above @classmethod / @staticmethod (wrapped in the test, with its tracer)."""

    @classmethod
    def cls_score(cls, i: int) -> int:
        return i + 10

    @staticmethod
    def static_score(i: int) -> int:
        return i + 20


# -- the tests -------------------------------------------------------------------------------


def test_tasks_and_actors_on_every_node_deliver_complete_nested_calls(make_engine, server):
    eng = make_engine()
    tracer = eng.producer()
    tasks_per_node, actor_calls_per_node = 4, 3
    @tracer.op
    def driver_op(i: int) -> int:
        return -i

    with tracer.call("evaluate") as root:
        refs = [score_task.options(**on(node)).remote(tracer, i)
                for node in NODES for i in range(tasks_per_node)]
        op_results = ray.get([run_op.options(**on(node)).remote(driver_op, 7) for node in NODES])
        actors = [Scorer.options(**on(node)).remote(tracer) for node in NODES]
        actor_refs = [a.score.remote(tracer, i) for a in actors for i in range(actor_calls_per_node)]
        placed = ray.get(refs)
        actor_nodes = ray.get(actor_refs)
    assert eng.flush(timeout_s=60)

    # 1 root + per node: 4 tasks x 2 calls + 3 actor calls x 2 (actor.score + judge) + 1 op
    expected = 1 + len(NODES) * (tasks_per_node * 2 + actor_calls_per_node * 2 + 1)
    calls = stored_calls(server)
    assert op_results == [-7] * 3
    assert len(calls) == expected == 46
    assert len({c["id"] for c in calls}) == expected
    assert all(c["ended_at"] and c["exception"] is None for c in calls)
    by_id = {c["id"]: c for c in calls}
    assert all(c["trace_id"] == root.trace_id for c in calls)
    for c in calls:
        if c["op_name"] in ("score", "actor.score") or c["op_name"].endswith("driver_op"):
            assert c["parent_id"] == root.id
        elif c["op_name"] == "score.child":
            assert by_id[c["parent_id"]]["op_name"] == "score"
        elif c["op_name"].endswith("judge"):
            assert by_id[c["parent_id"]]["op_name"] == "actor.score"
        else:
            assert c["id"] == root.id and c["parent_id"] is None
    # every node ran work, and the two nodes besides the driver's have an engine each
    assert len({node for node, _ in placed}) == 3 and len(set(actor_nodes)) == 3
    node_stats = eng.node_stats()
    assert set(node_stats) == {node for node, _ in placed} - {eng.cluster.driver_node}
    for stats in node_stats.values():  # each node's own calls went through its own engine
        assert stats["ring"]["records_written"] == 2 * (tasks_per_node * 2 + actor_calls_per_node * 2 + 1)
        assert len(stats["ring"]["slots"]) >= 2  # the task worker and the actor: one engine


def test_flush_from_the_driver_waits_for_every_node(make_engine, server):
    # calls sit in each node's batcher for a minute unless a flush sends them
    eng = make_engine(linger_ms=60_000)
    tracer = eng.producer()
    ray.get([score_task.options(**on(node)).remote(tracer, i)
             for node in NODES for i in range(5)])
    assert stored_calls(server) == []
    assert eng.flush(timeout_s=60)
    assert len(stored_calls(server)) == len(NODES) * 5 * 2 == 30


def _wait_for_file(path: str, timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    with open(path) as file:
        return file.read()


def _publish(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as file:
        file.write(text)
    os.rename(path + ".tmp", path)


@ray.remote
def doomed_task(tracer, calls: int, ready_path: str) -> list[str]:
    """``calls`` whole calls, then one left open; then waits to be killed -- unless an
    earlier attempt was (``ready_path`` exists): then it ends the open call and returns."""
    retried = os.path.exists(ready_path)
    ids = []
    for i in range(calls):
        with tracer.call("doomed", inputs={"i": i}) as call:
            call.output = i
        ids.append(call.id)
    opened = tracer.begin("doomed.open", {}, {}, None, tracer.project)
    ids.append(opened.id)
    if retried:
        tracer.finish(opened)
        return ids
    _publish(ready_path, f"{os.getpid()} {' '.join(ids)}")
    time.sleep(600)
    return ids


def _kill_when_ready(ready_path: str) -> list[str]:
    pid, *ids = _wait_for_file(ready_path).split()
    os.kill(int(pid), signal.SIGKILL)
    return ids


def test_a_killed_worker_loses_nothing_it_enqueued(make_engine, server, tmp_path):
    eng = make_engine(eager_start_ms=200)  # the open call's start goes alone after 200 ms
    ref = doomed_task.options(max_retries=0, **on("n1")).remote(
        eng.producer(), 25, str(tmp_path / "ready"))
    ids = _kill_when_ready(str(tmp_path / "ready"))
    with pytest.raises(ray.exceptions.WorkerCrashedError):
        ray.get(ref, timeout=60)
    assert eng.flush(timeout_s=60)
    calls = {c["id"]: c for c in stored_calls(server)}
    assert len(calls) == 26 and set(calls) == set(ids)
    assert [i for i, c in calls.items() if not c["ended_at"]] == [ids[-1]]  # the open one


def test_a_task_retried_after_its_worker_was_killed_repeats_the_same_ids(make_engine, server,
                                                                         tmp_path):
    eng = make_engine(eager_start_ms=200)
    ref = doomed_task.options(max_retries=1, **on("n2")).remote(
        eng.producer(), 25, str(tmp_path / "ready"))
    first_ids = _kill_when_ready(str(tmp_path / "ready"))
    assert ray.get(ref, timeout=120) == first_ids  # the retry: same calls, same ids
    assert eng.flush(timeout_s=60)
    calls = stored_calls(server)
    assert len(calls) == 26 and {c["id"] for c in calls} == set(first_ids)
    assert all(c["ended_at"] for c in calls)  # the retry completed the half-call


def test_a_node_engine_restarted_by_ray_resumes(make_engine, server):
    eng = make_engine(linger_ms=60_000)  # wave 1 is still in the ring when its engine dies
    tracer = eng.producer()
    ray.get([score_task.options(**on("n1")).remote(tracer, i) for i in range(5)])
    (node, stats), = eng.node_stats().items()
    deadline = time.monotonic() + 60
    while not stats["sender_heartbeat_ns"]:  # its sender is up and reading the rings
        assert time.monotonic() < deadline
        time.sleep(0.1)
        stats = eng.node_stats()[node]
    os.kill(stats["node_engine_pid"], signal.SIGKILL)
    # its orphaned sender delivers what was in the rings; Ray restarts the node engine
    assert len(wait_stored(server, 10)) == 10
    ray.get([score_task.options(**on("n1")).remote(tracer, i) for i in range(5, 10)])
    assert eng.flush(timeout_s=60)
    calls = stored_calls(server)
    assert len(calls) == 20 and len({c["id"] for c in calls}) == 20
    restarted = eng.node_stats()[node]
    assert restarted["node_engine_pid"] != stats["node_engine_pid"]
    assert restarted["ring"]["records_written"] == 20  # wave 2 went to the new engine


def add_ten(row: dict) -> dict:
    return {"id": row["id"], "plus": row["id"] + 10}


def test_ray_data_map_batches_traced_per_row_and_per_batch(make_engine, server):
    eng = make_engine()
    tracer = eng.producer()
    with tracer.call("dataset") as root:
        per_row = engine_ray.traced_batches(tracer, add_ten, per="row")
        rows = ray.data.range(12, override_num_blocks=3).map_batches(
            per_row, batch_format="numpy", batch_size=4).take_all()
        per_batch = engine_ray.traced_batches(tracer, lambda df: df.assign(x=1), per="batch",
                                              name="assign")
        frames = ray.data.range(12, override_num_blocks=3).map_batches(
            per_batch, batch_format="pandas", batch_size=4).take_all()
    assert sorted(r["plus"] for r in rows) == list(range(10, 22)) and len(frames) == 12
    assert eng.flush(timeout_s=60)
    calls = stored_calls(server)
    by_op = {}
    for c in calls:
        by_op.setdefault(c["op_name"].rsplit(".", 1)[-1], []).append(c)
    # 1 root + 12 rows under 3 batch calls + 3 batch calls (pandas) = 19
    assert len(calls) == 19
    assert len(by_op["add_ten"]) == 12 and len(by_op["batch"]) == 3 and len(by_op["assign"]) == 3
    batches = {c["id"] for c in by_op["batch"]}
    assert all(c["parent_id"] in batches for c in by_op["add_ten"])
    assert all(c["parent_id"] == root.id for c in by_op["batch"] + by_op["assign"])
    assert all(c["inputs"]["rows"] == 4 for c in by_op["batch"] + by_op["assign"])


def test_task_call_ids_are_uuid7s_a_retry_repeats():
    from engine.integrations.ray._tracer import task_ids

    first = task_ids("a1b2c3", 0, 1_700_000_000_123)
    assert first == task_ids("a1b2c3", 0, 1_700_000_000_123)
    assert len({first, task_ids("a1b2c3", 1, 1_700_000_000_123), task_ids("a1b2c4", 0, 1)}) == 3
    for text in first:
        value = int(text.replace("-", ""), 16)
        assert (value >> 76) & 0xF == 7 and (value >> 62) & 0b11 == 0b10
        assert value >> 80 == 1_700_000_000_123
    assert first[0] != first[1]


def test_a_node_that_goes_away_delivers_what_its_engine_held(make_engine, server, cluster):
    # calls sit in the node engine's batcher (60 s linger) when the node is removed: the
    # raylet ends the node engine's process group, its sender (a session of its own) drains
    node = cluster.add_node(**_NODE_ARGS, resources={"gone": 10})
    cluster.wait_for_nodes()
    eng = make_engine(linger_ms=60_000)
    ray.get([score_task.options(**on("gone")).remote(eng.producer(), i) for i in range(5)])
    assert stored_calls(server) == []
    (stats,) = eng.node_stats().values()
    deadline = time.monotonic() + 60
    while not stats["sender_heartbeat_ns"]:  # its sender is up and reading the rings
        assert time.monotonic() < deadline
        time.sleep(0.1)
        (stats,) = eng.node_stats().values()
    cluster.remove_node(node)
    assert len(wait_stored(server, 10)) == 10


def test_a_wrong_typed_argument_in_a_task_raises_there_and_ops_keep_their_descriptor(
        make_engine, server):
    """As the node-local tracer's calls: a task's call with inputs=[...] was written and
    refused by the server for good; an op above @classmethod raised TypeError."""
    eng = make_engine()
    tracer = eng.producer()
    assert ray.get(call_with_inputs.remote(tracer, [1, 2]), timeout=60) == (
        "tracer.call: inputs must be a dict of argument name to value, not list")
    assert ray.get(call_with_inputs.remote(tracer, {"i": 1}), timeout=60) == "traced"
    _Scores.cls_score = tracer.op(_Scores.__dict__["cls_score"])
    _Scores.static_score = tracer.op(_Scores.__dict__["static_score"])
    assert _Scores.cls_score(1) == 11 and _Scores().static_score(2) == 22
    assert eng.flush(timeout_s=60)
    ops = sorted(c["op_name"] for c in stored_calls(server))
    assert ops == ["_Scores.cls_score", "_Scores.static_score", "checked"]


@ray.remote
def hand_to_children(tracer, root_dir: str, mode: str) -> str | None:
    """Hands ``tracer`` to a child process of each kind in ``ray_mp_child.HOW``, each
    tracing 2 calls: the task traces nothing itself (``untraced``), traces a call first and
    hands it on outside it (``traced_before``), or hands it on inside its call ``task``
    (``in_call``: the id of that call is returned). Raises what a child answered if not ok."""
    sys.path.insert(0, root_dir)  # a spawned child imports ray_mp_child from the checkout
    from tests.integrations import ray_mp_child

    def hand_on() -> None:
        for how in ray_mp_child.HOW:
            answer = ray_mp_child.in_child(tracer, how, f"{mode}/{how}")
            assert answer == "ok", f"{mode}/{how}: {answer}"

    if mode == "traced_before":
        with tracer.call("task.before"):
            pass
    if mode != "in_call":
        hand_on()
        return None
    with tracer.call("task") as call:
        hand_on()
    return call.id


@ray.remote
def relay_to_n1(tracer, root_dir: str, mode: str) -> str | None:
    """Passes ``tracer`` on to ``hand_to_children`` on n1, tracing nothing."""
    return ray.get(hand_to_children.options(**on("n1")).remote(tracer, root_dir, mode))


def test_a_tracer_a_task_hands_to_a_multiprocessing_child_writes_into_its_nodes_engine(
        make_engine, server):
    """On a node besides the driver's, a forked or spawned child (a Process, a Pool's
    worker) given the task's tracer writes into that node's engine, its calls nested under
    the task's current call, else under the call the tracer came with. The untraced task
    gets its tracer from a task on n2 that traces nothing: n2 gets no node engine."""
    from tests.integrations.ray_mp_child import HOW

    eng = make_engine()
    tracer = eng.producer()
    modes = ("untraced", "traced_before", "in_call")
    root_dir = str(Path(__file__).resolve().parents[2])
    with tracer.call("evaluate") as root:
        task_call_ids = ray.get(
            [relay_to_n1.options(**on("n2")).remote(tracer, root_dir, modes[0])]
            + [hand_to_children.options(**on("n1")).remote(tracer, root_dir, mode)
               for mode in modes[1:]], timeout=120)
    assert eng.flush(timeout_s=60)

    calls = stored_calls(server)
    children = {c["inputs"]["label"]: c for c in calls if c["op_name"] == "child"}
    # 1 root + task.before + task + 2 calls in each of 3 children x 3 modes
    assert len(calls) == len({c["id"] for c in calls}) == 3 + 2 * len(modes) * len(HOW) == 21
    assert set(children) == {f"{mode}/{how}" for mode in modes for how in HOW}
    assert all(c["ended_at"] and c["exception"] is None for c in calls)
    # every call but the root was written into n1's engine, none into the driver's
    assert eng.stats()["ring"]["records_written"] == 2
    node_stats = eng.node_stats()
    assert len(node_stats) == 1  # n1's: n2 passed the tracer on, tracing nothing
    (n1_stats,) = node_stats.values()
    assert n1_stats["ring"]["records_written"] == 2 * (len(calls) - 1)
    task_call = task_call_ids[modes.index("in_call")]
    assert {label: (c["trace_id"], c["parent_id"]) for label, c in children.items()} == {
        label: (root.trace_id, task_call if label.startswith("in_call/") else root.id)
        for label in children}
    assert all(c["trace_id"] == root.trace_id for c in calls)
    inner_parents = sorted(c["parent_id"] for c in calls if c["op_name"] == "child.inner")
    assert inner_parents == sorted(c["id"] for c in children.values())
