"""Trace inside Ray clusters: one engine per node, calls nested across tasks.

After ``ray.init()``, one line on the driver::

    eng = engine.integrations.ray.RayEngine(url=URL, project="entity/project")
    tracer = eng.producer()      # pass it to tasks and actors on any node

    @ray.remote
    def score(tracer, row):
        with tracer.call("score", inputs=row) as call:   # child of the driver's call
            call.output = ...

    with tracer.call("evaluate") as root:
        ray.get([score.remote(tracer, row) for row in rows])
    eng.flush()                  # True once every node's engine acknowledged what came before

What runs where (``docs/ray.md``): the driver's engine serves the driver's node; every other
node gets a node engine (a Ray actor pinned to it, with the driver's settings) the first
time one of its processes writes; every worker process of a node writes into that node's
shared-memory rings; each node's sender posts to the trace server. A Ray Client driver
(``ray.init("ray://...")``) is on no node: its engine takes its own calls only, and every
node, the head too, gets a node engine.
"""

try:
    import ray  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("engine.integrations.ray needs Ray: pip install 'engine[ray]'") from exc

from engine.integrations.ray._data import traced_batches
from engine.integrations.ray._engine import RayEngine
from engine.integrations.ray._tracer import ClusterTracer, RemoteParent, TaskCall

__all__ = ["ClusterTracer", "RayEngine", "RemoteParent", "TaskCall", "traced_batches"]
