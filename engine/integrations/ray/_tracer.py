"""The tracer that travels through Ray: :class:`ClusterTracer` and its task calls.

A ``ClusterTracer`` pickled into a task or actor carries its driver engine's identity
(``Cluster``), the call that was current where it was pickled, and when. Wherever it is
unpickled it writes into the engine of the node it runs on (``_nodes.local_tracer``).

Inside a Ray task a traced call gets ids that a retry of the task repeats: the 48-bit time
of the UUIDv7 is when the tracer was pickled (a retried task gets the same arguments) and
the rest is a hash of Ray's task id and the call's rank in the task. A task retried after
its worker was killed therefore re-sends the same calls with the same ids, and the
server's upsert by id keeps one of each; a call the killed attempt started and never ended
is completed by the retry.

A tracer handed to a process outside Ray (a ``multiprocessing`` child of a task: pickled
for it, or inherited by a fork) names the ring set of the Ray process it came from, which
attaches to its node's engine first if it has not yet (pickled by Ray itself, a tracer
never does: a task passing it on to further tasks or returning it attaches nothing). Calls
traced there outside any call of their own nest under the call it came with.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec
import ray

from engine.common._errors import ConfigError
from engine.integrations.ray import _nodes
from engine.producer._handle import (
    CallHandle,
    _current,
    _describe,
    check_call_arguments,
    current_call,
)
from engine.producer._nested import ParentCall, current_parent
from engine.producer._ops import inputs_of
from engine.producer._tracer import Tracer
from engine.ring import RingSpec
from engine.wire import EndedCallSchemaForInsert, StartedCallSchemaForInsert, utcnow
from engine.wire._codec import uuid_text

__all__ = ["ClusterTracer", "RemoteParent", "TaskCall"]

log = logging.getLogger("engine.integrations.ray")

_V7_VERSION, _V7_VARIANT = 0x70, 0x80
_RANKS_KEPT = 4096  # tasks whose call ranks a process remembers (threaded / async actors)


# a call in another process that calls here nest under (the producer's, shared with
# engine.nested; kept under this name, which the integration exports)
RemoteParent = ParentCall


class _Carried(msgspec.Struct, frozen=True):
    """What a pickled ClusterTracer carries besides its cluster."""

    parent: RemoteParent | None
    pickled_ms: int  # the time part of the ids of calls traced in the task it goes to
    # the ring set the pickling process writes into, for a process outside Ray (a
    # multiprocessing child on its machine); None when Ray pickled it (for Ray processes,
    # which attach to their own node's engine)
    pickler_spec: RingSpec | None


_in_ray_process = True  # False in a child forked from a Ray worker or the driver
# True once this process was seen driving Ray (a process never turns into a worker): saves
# each of the driver's calls the look, ~10 us through a Ray Client connection's hooks
_in_driver = False


# The clusters of the tracers this Ray process unpickled (a task's, a tracer a task returned
# to its driver): a child it forks gets them, and must find their rings without Ray
_clusters_here: dict[str, _nodes.Cluster] = {}
_forked_in_task: str | None = None  # in a child forked by a Ray task: that task


def _before_fork() -> None:
    """Attach to the node's engine of each tracer held here, so that a forked child, which
    must not ask Ray for anything, writes into the same rings (``_nodes.forked_specs``)."""
    global _forked_in_task
    if not _clusters_here or not (_in_ray_process and ray.is_initialized()):
        return
    _forked_in_task = _ray_task_id()
    for cluster in list(_clusters_here.values()):
        try:
            _nodes.local_tracer(cluster)
        except Exception as exc:  # the child says so if it writes; the fork goes on
            log.warning("a process forked here cannot trace: no engine to write into (%s)",
                        exc)


def _after_fork_in_child() -> None:
    global _in_ray_process, _in_driver
    _in_ray_process = _in_driver = False


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def _outside_ray() -> bool:
    """A process forked or spawned by a Ray process (a multiprocessing child), or one that
    never joined Ray."""
    return not (_in_ray_process and ray.is_initialized())


def _ray_task_id() -> str | None:
    """The Ray task (or actor method call) running here; None in the driver."""
    global _in_driver
    if _in_driver or not _in_ray_process or not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    if context.worker.mode != ray.WORKER_MODE:
        _in_driver = True
        return None
    return context.get_task_id()


def _running_a_task() -> bool:
    """Whether this thread of a Ray worker runs a task (Ray gives every thread a task id of
    its own; one running no task has no task name)."""
    return bool(ray.get_runtime_context().get_task_name())


class _Ranks:
    """Per task: how many calls it traced so far (a call's rank makes its id)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_task: OrderedDict[str, int] = OrderedDict()

    def next(self, task_id: str) -> int:
        with self._lock:
            rank = self._by_task.pop(task_id, 0)
            self._by_task[task_id] = rank + 1
            if len(self._by_task) > _RANKS_KEPT:
                self._by_task.popitem(last=False)
            return rank


_ranks = _Ranks()


def task_ids(task_id: str, rank: int, time_ms: int) -> tuple[str, str]:
    """(call id, trace id for a root call): UUIDv7s whose time is ``time_ms`` and whose
    random bits come from the task and the call's rank in it."""
    digest = hashlib.blake2b(f"{task_id}/{rank}".encode(), digest_size=20).digest()
    prefix = (time_ms & 0xFFFF_FFFF_FFFF).to_bytes(6, "big")
    return _v7(prefix, digest[:10]), _v7(prefix, digest[10:])


def _v7(prefix: bytes, rand: bytes) -> str:
    raw = bytearray(prefix + rand)
    raw[6] = _V7_VERSION | (raw[6] & 0x0F)
    raw[8] = _V7_VARIANT | (raw[8] & 0x3F)
    return uuid_text(bytes(raw))


class ClusterTracer:
    """A tracer for a Ray cluster: get it from :meth:`RayEngine.producer` and pass it to
    tasks and actors. It has a :class:`engine.Tracer`'s methods; in each process it writes
    into its node's engine. Calls traced in a task nest under the call that was current
    where the tracer was passed to that task."""

    def __init__(self, cluster: _nodes.Cluster, carried: _Carried | None = None,
                 local: Tracer | None = None) -> None:
        self._cluster = cluster
        self._unpickled = carried is not None
        self._carried = carried or _Carried(None, 0, None)
        self._local_tracer = local  # None until first use (then this process's node tracer)
        self._owner = _nodes.NO_OWNER
        self._task_id = _ray_task_id()  # the task whose arguments brought it here
        self._closed = False

    def __reduce__(self) -> Any:
        """Pickled by anything but Ray (``multiprocessing``, for a child on this machine):
        names the ring set this process writes into, attached to first if need be."""
        return self._reduced(self._spec_for_children())

    def _reduced(self, pickler_spec: RingSpec | None) -> Any:
        parent = current_parent()
        if parent is None and self._unpickled:  # passed on outside any call
            parent = self._parent_passed_on()
        carried = _Carried(parent, time.time_ns() // 1_000_000, pickler_spec)
        return (_unpickle, (self._cluster, carried))

    def _spec_for_children(self) -> RingSpec | None:
        try:
            return self.local()._spec
        except Exception as exc:  # closed, or no engine here: the child says so if it writes
            log.warning("a process given this tracer cannot trace: no engine to write into "
                        "(%s)", exc)
            return None

    @property
    def project(self) -> str:
        return self._cluster.settings.project

    # -- the ergonomic layer: task calls inside Ray tasks, the engine's handle elsewhere ----

    def call(self, op_name: str, inputs: dict[str, Any] | None = None, *,
             attributes: dict[str, Any] | None = None, display_name: str | None = None,
             project: str | None = None) -> CallHandle | TaskCall | _UnderCarried:
        """As :meth:`engine.Tracer.call`; inside a Ray task, ids a retry repeats."""
        task_id = _ray_task_id()
        if task_id is None:
            handle = self.local().call(op_name, inputs, attributes=attributes,
                                       display_name=display_name, project=project)
            if _in_driver or current_call() is not None or not _outside_ray():
                return handle
            parent = self._parent_outside_ray()
            return handle if parent is None else _UnderCarried(handle, parent)
        inputs, attributes = inputs or {}, attributes or {}
        check_call_arguments(op_name, inputs, attributes, display_name, project or self.project)
        return TaskCall(self, task_id, op_name, inputs, attributes, display_name,
                        project or self.project)

    def op(self, fn: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
        """As :meth:`engine.Tracer.op`; the wrapper pickles with the function, so an op
        defined in the driver traces in whichever task runs it."""
        if fn is None:
            return functools.partial(self.op, name=name)
        return _wrap_op(self, fn, name or getattr(fn, "__qualname__", repr(fn)))

    def begin(self, op_name: str, inputs: dict[str, Any], attributes: dict[str, Any],
              display_name: str | None, project: str) -> CallHandle | TaskCall:
        """Start a call now (``finish`` ends it)."""
        return self.call(op_name, inputs, attributes=attributes, display_name=display_name,
                         project=project).__enter__()

    def finish(self, handle: CallHandle | TaskCall, exception: BaseException | None = None) -> None:
        handle.__exit__(None, exception, None)
        if _current.get() is self._carried.parent is not None:  # begun by begin() under it
            _current.set(None)

    # -- the wire-level entry points: straight into this node's engine ---------------------

    def call_start(self, start: Any) -> Any:
        return self.local().call_start(start)

    def call_end(self, end: Any) -> None:
        self.local().call_end(end)

    def call_complete(self, call: Any) -> None:
        self.local().call_complete(call)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until this process's calls were acknowledged by its node's engine's server."""
        return True if self._local_tracer is None else self._local_tracer.flush(timeout_s)

    def close(self) -> None:
        self._closed = True
        if self._local_tracer is not None:
            self._local_tracer.close()

    # -- internals ----------------------------------------------------------------------------

    def local(self) -> Tracer:
        """This process's tracer into its node's engine (attached on first use, again after
        the node engine was restarted by Ray)."""
        tracer = self._local_tracer
        if tracer is not None and _nodes.alive(self._owner):
            return tracer
        if self._closed:
            from engine.common._errors import Closed

            raise Closed("this tracer is closed")
        if not _outside_ray():
            tracer, self._owner = _nodes.local_tracer(self._cluster)
        else:  # a multiprocessing child: the rings of the Ray process it came from
            spec = (self._carried.pickler_spec  # pickled for it
                    or _nodes.forked_specs.get(self._cluster.key))  # or forked with it
            if spec is None:
                raise ConfigError("ray", "this process runs outside Ray and got the tracer "
                                         "from a process that named no engine to write into "
                                         "(that process logged why)")
            tracer, self._owner = Tracer(spec, self._cluster.settings), _nodes.NO_OWNER
        self._local_tracer = tracer
        return tracer

    def parent_in(self, task_id: str) -> RemoteParent | None:
        """The carried parent, for calls of the task this tracer was passed to."""
        return self._carried.parent if task_id == self._task_id else None

    def _parent_passed_on(self) -> RemoteParent | None:
        """The carried parent, when the process pickling this tracer outside any call passes
        it on from where it got it: the task it was passed to; a thread running no task (a
        Pool's task handler in that task's worker; the Ray Client server, which unpickles
        what a ``ray://`` driver sends and pickles it again into the tasks it submits for
        it; a driver); a multiprocessing child."""
        if _outside_ray():
            return self._parent_outside_ray()
        here = _ray_task_id()
        if here is None or here == self._task_id or not _running_a_task():
            return self._carried.parent
        return None

    def _parent_outside_ray(self) -> RemoteParent | None:
        """The carried parent, for calls outside any call in a multiprocessing child that
        unpickled this tracer, or got it with a fork by the task it was passed to."""
        if self._task_id is None or self._task_id == _forked_in_task:
            return self._carried.parent
        return None

    def pickled_ms(self) -> int:
        return self._carried.pickled_ms or time.time_ns() // 1_000_000


def _unpickle(cluster: _nodes.Cluster, carried: _Carried) -> ClusterTracer:
    tracer = ClusterTracer(cluster, carried)
    if tracer._task_id is not None or cluster.key in _nodes.driver_specs:
        # a worker's, or a driver's own engine's (not the Ray Client server relaying it)
        _clusters_here.setdefault(cluster.key, cluster)
    return tracer


def _reduce_for_ray(tracer: ClusterTracer) -> Any:
    """How Ray pickles a tracer (into tasks, actors, return values): no ring set, which
    Ray processes find for themselves, and no attaching (a task passing it on may trace
    nothing)."""
    return tracer._reduced(None)


# what ray.util.register_serializer does, without needing a connected Ray worker: this module
# is imported before ray.init in a driver, and while Ray unpickles a tracer in a worker
ray.cloudpickle.CloudPickler.dispatch[ClusterTracer] = _reduce_for_ray


class _UnderCarried:
    """A call outside any call in a multiprocessing child: begun under the call the tracer
    came with (``with tracer.call(...) as call`` gives the call's own handle)."""

    __slots__ = ("_handle", "_parent", "_token")

    def __init__(self, handle: CallHandle, parent: RemoteParent) -> None:
        self._handle, self._parent, self._token = handle, parent, None

    def __enter__(self) -> CallHandle:
        self._token = _current.set(self._parent)
        return self._handle.__enter__()

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            self._handle.__exit__(exc_type, exc, tb)
        finally:
            _current.reset(self._token)

    async def __aenter__(self) -> CallHandle:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.__exit__(exc_type, exc, tb)


class TaskCall:
    """One call traced inside a Ray task: ``with tracer.call(...) as call:`` (set ``output``
    / ``summary``), as :class:`engine.CallHandle`, with ids a retry of the task repeats."""

    __slots__ = ("id", "trace_id", "parent_id", "op_name", "started_at", "output", "summary",
                 "inputs", "attributes", "display_name", "_project", "_tracer", "_task_id",
                 "_token", "_parent")

    def __init__(self, tracer: ClusterTracer, task_id: str, op_name: str,
                 inputs: dict[str, Any], attributes: dict[str, Any], display_name: str | None,
                 project: str, parent: RemoteParent | None = None) -> None:
        self._tracer = tracer
        self._task_id = task_id
        self._parent = parent
        self.op_name, self.inputs, self.attributes = op_name, inputs, attributes
        self.display_name, self._project = display_name, project
        self.output: Any = None
        self.summary: dict[str, Any] = {}
        self.id = self.trace_id = self.parent_id = self.started_at = None
        self._token: Any = None

    def __enter__(self) -> TaskCall:
        parent = current_call() or self._parent or self._tracer.parent_in(self._task_id)
        rank = _ranks.next(self._task_id)
        self.id, root_trace = task_ids(self._task_id, rank, self._tracer.pickled_ms())
        if parent is None:
            self.trace_id, self.parent_id = root_trace, None
        else:
            self.trace_id, self.parent_id = parent.trace_id, parent.id
        self.started_at = utcnow()
        self._tracer.local().call_start(StartedCallSchemaForInsert(
            project_id=self._project, id=self.id, op_name=self.op_name,
            display_name=self.display_name, trace_id=self.trace_id, parent_id=self.parent_id,
            started_at=self.started_at, attributes=self.attributes, inputs=self.inputs))
        self._token = _current.set(self)
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None
        self._tracer.local().call_end(EndedCallSchemaForInsert(
            project_id=self._project, id=self.id, trace_id=self.trace_id,
            started_at=self.started_at, ended_at=utcnow(),
            exception=None if exc is None else _describe(exc),
            output=self.output, summary=self.summary))

    async def __aenter__(self) -> TaskCall:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.__exit__(exc_type, exc, tb)


def _wrap_op(tracer: ClusterTracer, fn: Callable[..., Any], op_name: str) -> Callable[..., Any]:
    if isinstance(fn, (classmethod, staticmethod)):  # above the decorator: still one of them
        return type(fn)(_wrap_op(tracer, fn.__func__, op_name))
    inputs_of_call = inputs_of(fn)

    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def traced_async(*args: Any, **kwargs: Any) -> Any:
            with tracer.call(op_name, inputs_of_call(args, kwargs)) as call:
                call.output = await fn(*args, **kwargs)
            return call.output

        return traced_async

    @functools.wraps(fn)
    def traced(*args: Any, **kwargs: Any) -> Any:
        with tracer.call(op_name, inputs_of_call(args, kwargs)) as call:
            call.output = fn(*args, **kwargs)
        return call.output

    return traced
