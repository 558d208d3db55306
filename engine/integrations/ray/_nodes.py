"""One engine per Ray node: the registry actor, the node engine actors, and how a process
finds the ring of the node it runs on.

The driver's :class:`engine.Engine` is its own node's engine. Every other node gets a
node engine the first time a process there writes (or hands a tracer to a
``multiprocessing`` child, which must not ask Ray itself): an actor pinned to that node
(``NodeAffinitySchedulingStrategy``, hard), created by the registry actor of the driver's
engine. The registry is owned by the driver, and it owns the node engines, so Ray ends
all of them with the driver's job; Ray restarts a node engine whose process dies
(``max_restarts=-1``), on the same node.

A Ray Client driver (``ray.init("ray://...")``) runs on no node of the cluster: its engine
serves the driver process alone, every node (the head too) gets a node engine, and the
registry goes beside the Ray Client server, which owns the actors the driver makes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import msgspec
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from engine.common._config import EngineConfig, spool_path
from engine.common._errors import ConfigError
from engine.producer._engine import Engine
from engine.producer._slot import ProducerSettings
from engine.producer._tracer import Tracer
from engine.ring import RingSpec
from engine.ring import _files as ring_files

__all__ = ["Cluster", "driver_specs", "forked_specs", "is_client_driver", "local_tracer",
           "node_id", "registry_of", "start_registry"]

log = logging.getLogger("engine.integrations.ray")
NAMESPACE = "engine"
# A node engine answers attach and flush requests while a long flush runs.
_NODE_ENGINE_THREADS = 4
# A Ray worker that exits (its node going away, say) kills its child processes; the node
# engine's sender must outlive it to drain and persist what the rings hold.
_KEEP_SENDER = {"env_vars": {"RAY_kill_child_processes_on_worker_exit": "false"}}


class Cluster(msgspec.Struct, frozen=True):
    """What a pickled tracer carries about its driver's engine (no settings, no key: the
    registry holds those)."""

    key: str  # names the registry actor; one per driver engine
    driver_node: str  # "" for a Ray Client driver: no node shares its engine
    driver_spec: RingSpec | None  # None for a Ray Client driver (no worker may write there)
    settings: ProducerSettings

    @property
    def registry_name(self) -> str:
        return f"engine-registry-{self.key}"


def node_id() -> str:
    """The Ray node this process runs on (for a Ray Client driver: the node of the Ray
    Client server it is connected to, not its own)."""
    return ray.get_runtime_context().get_node_id()


def is_client_driver() -> bool:
    """Whether this process drives the cluster through Ray Client (``ray://``): it runs
    outside the cluster and can share memory with no worker."""
    return ray.util.client.ray.is_connected()


# The driver engines made in this process, by cluster key: a tracer of one of them that
# this process unpickles (a task returned it) writes into it, not into its node's
driver_specs: dict[str, RingSpec] = {}


def node_config(config: EngineConfig, node: str) -> dict[str, Any]:
    """The driver's settings for ``node``'s engine: the same, but a spool directory of the
    node's own (nodes may share a filesystem; a restarted node engine replays its own). The
    default spool (``"auto"``) stays so: each node engine finds it under its own user's state
    directory (engines of one machine may share it: a replayer locks each segment it sends)."""
    fields = msgspec.structs.asdict(config)
    if spool_path(config) and config.spool_dir != "auto":
        fields["spool_dir"] = os.path.join(config.spool_dir, f"node-{node[:16]}")
    return fields


class _NodeEngine:
    """A Ray actor holding one node's :class:`engine.Engine` (owner of its rings and
    sender). Every worker process of the node writes into its rings."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._engine = Engine(**config)

    def ring(self) -> tuple[RingSpec, int]:
        """The ring set to attach to, and the owner's pid (its liveness tells a worker the
        node engine was restarted and it should ask again)."""
        return self._engine.spec, os.getpid()

    def flush(self, timeout_s: float) -> bool:
        return self._engine.flush(timeout_s)

    def stats(self) -> dict[str, Any]:
        """The engine's stats, and ``node_engine_pid`` (it changes when Ray restarts it)."""
        return {**self._engine.stats(), "node_engine_pid": os.getpid()}

    def close(self, timeout_s: float) -> dict[str, Any]:
        return self._engine.close(timeout_s)


class _Registry:
    """The driver engine's node engines, created on first use, one per node."""

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        self._nodes: dict[str, Any] = {}

    def node_engine(self, node: str) -> Any:
        handle = self._nodes.get(node)
        if handle is None:
            strategy = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
            handle = self._nodes[node] = _NodeEngineActor.options(
                scheduling_strategy=strategy, max_restarts=-1, max_task_retries=-1,
                max_concurrency=_NODE_ENGINE_THREADS, num_cpus=0, runtime_env=_KEEP_SENDER,
            ).remote(node_config(self._config, node))
        return handle

    def nodes(self) -> dict[str, Any]:
        return dict(self._nodes)


_NodeEngineActor = ray.remote(_NodeEngine)
_RegistryActor = ray.remote(_Registry)


def start_registry(cluster: Cluster, config: EngineConfig) -> Any:
    """The registry actor of a driver engine, owned by the driver: on the driver's node,
    or, for a Ray Client driver, on the Ray Client server's (the head, usually)."""
    near = cluster.driver_node or node_id()
    strategy = NodeAffinitySchedulingStrategy(node_id=near, soft=True)
    return _RegistryActor.options(
        name=cluster.registry_name, namespace=NAMESPACE, num_cpus=0, max_restarts=-1,
        scheduling_strategy=strategy,
    ).remote(config)


def registry_of(cluster: Cluster) -> Any:
    return ray.get_actor(cluster.registry_name, namespace=NAMESPACE)


# The node engine's process a worker's tracer writes for: (pid, start time in clock ticks);
# NO_OWNER when the process itself owns the engine (the driver's node)
Owner = tuple[int, int]
NO_OWNER: Owner = (0, 0)


class _Attached(msgspec.Struct):
    tracer: Tracer
    owner: Owner


_lock = threading.Lock()
_attached: dict[str, _Attached] = {}  # cluster key -> this process's node tracer


def local_tracer(cluster: Cluster) -> tuple[Tracer, Owner]:
    """This process's tracer into its node's engine, and that engine's process (NO_OWNER
    when it needs no watching). Asks the registry the first time, and again after the node
    engine it had was restarted."""
    with _lock:
        known = _attached.get(cluster.key)
        if known is not None and alive(known.owner):
            return known.tracer, known.owner
        driver_spec = driver_specs.get(cluster.key)
        if driver_spec is not None:  # the driver itself
            spec, owner = driver_spec, NO_OWNER
        elif is_client_driver():
            raise ConfigError("ray", "this Ray Client driver did not make the RayEngine of "
                              "this tracer: it can write into no engine of the cluster's "
                              "nodes (they share no memory with it)")
        elif (node := node_id()) == cluster.driver_node:
            # the driver's own engine serves its node
            spec, owner = cluster.driver_spec, NO_OWNER
        else:
            node_engine = ray.get(registry_of(cluster).node_engine.remote(node))
            spec, owner_pid = ray.get(node_engine.ring.remote())
            owner = (owner_pid, ring_files.process_start_ticks(owner_pid) or 0)
        if known is not None:
            known.tracer.close()
        tracer = Tracer(spec, cluster.settings)
        _attached[cluster.key] = _Attached(tracer, owner)
        return tracer, owner


_LIVENESS_EVERY_S = 0.1
_seen_alive: dict[Owner, float] = {}  # owner -> when it was last seen running (monotonic)


def alive(owner: Owner) -> bool:
    """Whether the node engine process still runs, looked at in /proc at most every 0.1 s
    (this runs for every call a task traces): a SIGKILLed one its raylet has not reaped yet
    is a zombie, which ``kill(pid, 0)`` still finds (new calls then went to its dead rings,
    left to its orphaned sender); a pid given to another process since does not count."""
    pid, start_ticks = owner
    if pid == 0:
        return True
    now = time.monotonic()
    if now - _seen_alive.get(owner, -_LIVENESS_EVERY_S) < _LIVENESS_EVERY_S:
        return True
    if not ring_files.is_alive(pid, start_ticks):
        _seen_alive.pop(owner, None)
        return False
    _seen_alive[owner] = now
    return True


# In a child forked by a Ray process (outside Ray): the ring sets that process had attached
# to, by cluster key; a tracer the child got with the fork, not pickled, writes there
forked_specs: dict[str, RingSpec] = {}


def _after_fork_in_child() -> None:
    """A forked child is no Ray worker: it must not ask Ray for anything, and writes into
    the rings its parent wrote into (``forked_specs``)."""
    forked_specs.update((key, known.tracer._spec) for key, known in _attached.items())
    _attached.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
