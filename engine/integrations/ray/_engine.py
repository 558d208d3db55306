"""The driver's side: :class:`RayEngine`, an :class:`engine.Engine` whose tracers work on
every node of the Ray cluster and whose ``flush`` covers every node's engine."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import ray

from engine.common._errors import ConfigError
from engine.integrations.ray import _nodes
from engine.integrations.ray._tracer import ClusterTracer
from engine.producer._engine import Engine

__all__ = ["RayEngine"]

log = logging.getLogger("engine.integrations.ray")


class RayEngine(Engine):
    """The driver's engine for a Ray job; call after ``ray.init()``.

    Same arguments and settings as :class:`engine.Engine`. Its :meth:`producer` gives a
    :class:`ClusterTracer`: pass it to tasks and actors (as an argument, or captured by the
    function), and each process writes into the engine of the node it runs on, this one on
    the driver's node, a node engine (started on first use, with these settings) elsewhere.
    A Ray Client driver (``ray.init("ray://...")``) is on no node: this engine takes its own
    calls only, and every node, the head too, gets a node engine.
    """

    def __init__(self, url: str | None = None, project: str | None = None, *,
                 config_file: str | None = None, **config: Any) -> None:
        if not ray.is_initialized():
            raise ConfigError("ray", "call ray.init() before creating a RayEngine (for a Ray "
                                     "Client context made with allow_multiple=True, create "
                                     "it inside `with context:`)")
        super().__init__(url, project, config_file=config_file, **config)
        # a Ray Client driver shares memory with no node: every node gets a node engine
        on_node = not _nodes.is_client_driver()
        self.cluster = _nodes.Cluster(
            key=uuid.uuid4().hex, driver_node=_nodes.node_id() if on_node else "",
            driver_spec=self.spec if on_node else None, settings=self._settings)
        self._registry: Any = _nodes.start_registry(self.cluster, self.config)
        _nodes.driver_specs[self.cluster.key] = self.spec

    def producer(self) -> ClusterTracer:  # type: ignore[override]
        """A tracer for anywhere in the cluster (picklable into tasks and actors)."""
        return ClusterTracer(self.cluster, local=super().producer())

    def flush(self, timeout_s: float = 30.0) -> bool:
        """True once this engine and every node engine acknowledged (or dead-lettered or
        spooled) what was enqueued before this call; False if ``timeout_s`` passed first
        or a node engine could not answer."""
        deadline = time.monotonic() + timeout_s
        pending = [(node, handle.flush.remote(timeout_s)) for node, handle in self._node_engines()]
        done = super().flush(timeout_s)
        for node, ref in pending:
            done = self._node_answer(node, ref, deadline, False) and done
        return done

    def node_stats(self, timeout_s: float = 30.0) -> dict[str, dict[str, Any]]:
        """Each node engine's :meth:`engine.Engine.stats`, by Ray node id (the driver's
        node is :meth:`stats`; a Ray Client driver's :meth:`stats` is its own calls')."""
        deadline = time.monotonic() + timeout_s
        pending = [(node, handle.stats.remote()) for node, handle in self._node_engines()]
        return {node: self._node_answer(node, ref, deadline, {}) for node, ref in pending}

    def close(self, timeout_s: float | None = None) -> dict[str, Any]:
        """Close every node engine (each flushes within ``timeout_s``, then spools or
        dead-letters the rest, as :meth:`engine.Engine.close`), then this one."""
        timeout_s = self.config.shutdown_timeout_s if timeout_s is None else timeout_s
        if not self._closed and ray.is_initialized():
            self._close_nodes(timeout_s)
        _nodes.driver_specs.pop(self.cluster.key, None)
        return super().close(timeout_s)

    # -- internals ----------------------------------------------------------------------------

    def _node_engines(self) -> list[tuple[str, Any]]:
        """The node engines of nodes still in the cluster (a node that went away took its
        engine with it; its sender drains and persists on its own)."""
        if self._registry is None:  # closed: only this engine is left
            return []
        alive = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
        engines = ray.get(self._registry.nodes.remote())
        return sorted((node, handle) for node, handle in engines.items() if node in alive)

    def _close_nodes(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s + 10.0
        try:
            pending = [(node, handle.close.remote(timeout_s))
                       for node, handle in self._node_engines()]
        except ray.exceptions.RayError as exc:
            log.error("could not reach the node engines' registry: %s", exc)
            return
        for node, ref in pending:
            stats = self._node_answer(node, ref, deadline, None)
            if stats and stats.get("undelivered"):
                log.error("node %s closed with %d items undelivered (spooled or dead-lettered)",
                          node, stats["undelivered"])
        registry, self._registry = self._registry, None
        ray.kill(registry)  # its node engines go with it

    def _node_answer(self, node: str, ref: Any, deadline: float, failed: Any) -> Any:
        try:
            return ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError) as exc:
            log.error("node engine on %s did not answer: %s", node, exc)
            return failed
