"""engine.integrations.ray driven through Ray Client (``ray.init("ray://...")``): a head node
with a Ray Client server and one more node (``ray.cluster_utils.Cluster``, 127.0.0.1), a
real ``engine serve``, and the driver in a process of its own
(``tests/integrations/ray_client_driver.py``), as a laptop's notebook would drive KubeRay.

On this box the driver could map the nodes' shared memory and the nodes its own, so
delivery alone proves little: the test checks where each call was written too (the driver's
ring counts, each node engine's).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
import warnings
from pathlib import Path

import msgspec
import pytest

from engine.server import serve_subprocess
from tests.integrations._rays import Cluster, loopback_ray, ray  # skips without Ray

pytestmark = [pytest.mark.ray, pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("ray_client_driver.py")
PROJECT = "ray-entity/ray-client"
_NODE_ARGS = dict(num_cpus=1, object_store_memory=100 << 20, node_ip_address="127.0.0.1")
_DRIVER_TIMEOUT_S = 180


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_ray_dirs: list[str] = []  # the module's cluster's temp dir (its logs), while it runs


def _client_server_logs() -> str:
    """The tail of the Ray Client servers' error logs, for a driver that could not connect."""
    logs = sorted(Path(_ray_dirs[-1]).rglob("ray_client_server*.err")) if _ray_dirs else []
    return "".join(f"\n--- {log.name}:\n{log.read_text(errors='replace')[-2000:]}"
                   for log in logs)


@pytest.fixture(scope="module")
def client_address():
    """``ray://`` address of a head (resource ``head``, Ray Client server) + 1 node (``n1``).
    This process starts the nodes and never connects to them as a driver."""
    with loopback_ray("ray-client-") as temp_dir:
        _ray_dirs.append(temp_dir)
        port = _free_port()
        with warnings.catch_warnings():  # Ray drops the log files it gave the server's process
            warnings.filterwarnings("ignore", r"unclosed file .*ray_client_server\.(out|err)",
                                    ResourceWarning)
            nodes = Cluster(initialize_head=True, head_node_args=dict(
                _NODE_ARGS, resources={"head": 10}, include_dashboard=False,
                temp_dir=temp_dir, ray_client_server_port=port))
        try:
            nodes.add_node(**_NODE_ARGS, resources={"n1": 10})
            nodes.wait_for_nodes()
            yield f"ray://127.0.0.1:{port}"
        finally:
            nodes.shutdown()


@pytest.fixture
def server(tmp_path):
    with serve_subprocess(tmp_path / "traces.db") as url:
        yield url


def run_driver(address: str, url: str, work_dir: Path) -> dict:
    """Run the driver script to its end (killing its process group if it overstays) and
    give what it wrote."""
    settings = dict(project=PROJECT, compression="none", linger_ms=5, backoff_initial_ms=10,
                    backoff_max_ms=200, shutdown_timeout_s=20.0, ring_bytes=1 << 20,
                    max_slots=16, dead_letter_path=str(work_dir / "dead.jsonl"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    log_path = work_dir / "driver.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(DRIVER), address, url, json.dumps(settings), str(work_dir)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT),
            start_new_session=True)
        try:
            returncode = proc.wait(timeout=_DRIVER_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert returncode == 0, log_path.read_text()[-6000:] + _client_server_logs()
    return json.loads((work_dir / "seen.json").read_text())


def stored_calls(url: str) -> list[dict]:
    request = urllib.request.Request(url + "/calls/stream_query",
                                     data=msgspec.json.encode({"project_id": PROJECT}))
    with urllib.request.urlopen(request, timeout=30) as resp:
        return [msgspec.json.decode(line) for line in resp.read().splitlines()]


def test_a_ray_client_driver_traces_into_its_own_engine_and_every_node_into_a_node_engine(
        client_address, server, tmp_path):
    seen = run_driver(client_address, server, tmp_path)

    assert seen["before_init"] == (
        "ray: call ray.init() before creating a RayEngine (for a Ray Client context made "
        "with allow_multiple=True, create it inside `with context:`)")
    assert seen["client_connected"] is True
    # no node shares the driver's engine: the driver's node is none, its rings unknown there
    assert seen["driver_node"] == "" and seen["driver_spec"] is None
    head, n1 = seen["placed"][0], seen["placed"][-1]
    assert seen["placed"] == [head, head, n1, n1] and head != n1
    assert seen["op_results"] == [-7, -7] and seen["actor_node"] == n1
    assert seen["retried_ids"] == seen["first_attempt_ids"]  # the retry: same ids
    assert seen["flushed"] is True and seen["closed_undelivered"] == 0
    assert seen["children"] == ["ok", "ok"]  # a task's forked and spawned children traced

    # every call stored once, complete, nested under the driver's root
    calls = stored_calls(server)
    by_op: dict[str, list[dict]] = {}
    for c in calls:
        by_op.setdefault(c["op_name"].rsplit(".", 1)[-1] if "driver_op" in c["op_name"]
                         else c["op_name"], []).append(c)
    assert {op: len(cs) for op, cs in by_op.items()} == {
        "evaluate": 1, "score": 4, "score.child": 4, "driver_op": 2, "actor.score": 1,
        "retried": 3, "driver.returned": 1, "child": 2, "child.inner": 2}
    assert len({c["id"] for c in calls}) == len(calls) == 20
    assert all(c["ended_at"] and c["exception"] is None for c in calls)
    assert all(c["trace_id"] == seen["root_trace_id"] for c in calls)
    by_id = {c["id"]: c for c in calls}
    (root,) = by_op.pop("evaluate")
    assert root["id"] == seen["root_id"] and root["parent_id"] is None
    for inner, outer in (("score.child", "score"), ("child.inner", "child")):
        for c in by_op.pop(inner):
            assert by_id[c["parent_id"]]["op_name"] == outer
    assert all(c["parent_id"] == root["id"] for cs in by_op.values() for c in cs)
    assert sorted(c["id"] for c in by_op["retried"]) == sorted(seen["retried_ids"])

    # where they were written (2 records a call): the driver's engine took its own 2 calls,
    # the head's and n1's node engines their workers' -- not the driver's rings
    assert seen["driver_records"] == 2 * 2  # evaluate, driver.returned
    records = {node: stats["ring"]["records_written"]
               for node, stats in seen["node_stats"].items()}
    # head: 2 tasks x 2 + 1 op; n1: the same + actor.score + 3 retried, each attempt + the
    # children's 4 (the task that handed them its tracer traced nothing itself)
    assert records == {head: 2 * 5, n1: 2 * (5 + 1 + 3 + 3 + 4)}


def test_a_client_drivers_tracer_outside_ray_with_no_ring_to_write_to_says_so(caplog):
    """A Ray Client driver's tracer names no ring for others (``driver_spec`` None): a
    process outside Ray given it by one that could name no engine to write into (here: one
    outside Ray itself) gets a clear error, never the driver's rings."""
    import pickle

    from engine.common._errors import ConfigError
    from engine.integrations.ray._nodes import Cluster as EngineCluster
    from engine.integrations.ray._tracer import ClusterTracer
    from engine.producer._slot import ProducerSettings

    assert not ray.is_initialized()  # this process is outside Ray
    settings = ProducerSettings(project=PROJECT, max_block_ms=0, on_full="drop", strict=False,
                                max_request_bytes=1 << 20)
    cluster = EngineCluster(key="k", driver_node="", driver_spec=None, settings=settings)
    tracer = pickle.loads(pickle.dumps(ClusterTracer(cluster)))  # pickling logs, never raises
    assert "a process given this tracer cannot trace: no engine to write into" in caplog.text
    with pytest.raises(ConfigError, match="runs outside Ray and got the tracer from a process "
                                          "that named no engine to write into"):
        tracer.call("anything")


def test_a_tracer_unpickled_outside_ray_nests_under_the_call_it_came_with(server, monkeypatch):
    """As in a multiprocessing child of a Ray task, given the tracer pickled (here: twice,
    as a child passing it on to its own child): calls outside any call of their own, by
    ``with``, ``begin`` / ``finish``, an op, ``async with``, nest under the call the tracer
    came with, into the ring set it named, and leave no current call behind."""
    import asyncio
    import pickle

    import engine
    from engine.integrations.ray import RemoteParent, _tracer
    from engine.integrations.ray._nodes import Cluster as EngineCluster

    monkeypatch.setattr(_tracer, "_in_driver", False)  # if this process drove Ray before
    assert not ray.is_initialized()  # this process is outside Ray
    came_with = RemoteParent(id="01a25000-0000-7000-8000-000000000001",
                             trace_id="01a25000-0000-7000-8000-000000000002")
    with engine.Engine(url=server, project=PROJECT, linger_ms=5, shutdown_timeout_s=10) as eng:
        cluster = EngineCluster(key="k", driver_node="", driver_spec=None, settings=eng._settings)
        given = _tracer.ClusterTracer(cluster, _tracer._Carried(came_with, 0, eng.spec))
        tracer = pickle.loads(pickle.dumps(pickle.loads(pickle.dumps(given))))

        with tracer.call("with") as outer, tracer.call("with.inner"):
            pass
        tracer.finish(tracer.begin("begun", {}, {}, None, PROJECT))
        tracer.op(lambda: 1, name="op")()

        async def in_a_task() -> None:
            async with tracer.call("async"):
                pass

        asyncio.run(in_a_task())
        assert engine.current_call() is None
        assert eng.flush(timeout_s=30)

    calls = {c["op_name"]: c for c in stored_calls(server)}
    assert sorted(calls) == ["async", "begun", "op", "with", "with.inner"]
    assert {op: (c["trace_id"], c["parent_id"]) for op, c in calls.items()} == {
        **{op: (came_with.trace_id, came_with.id) for op in ("async", "begun", "op", "with")},
        "with.inner": (came_with.trace_id, outer.id)}
