"""Send an unmodified weave program's traces through the engine (weave 0.54.x and 0.53.x).

One line before ``weave.init`` (or ``ENGINE_WEAVE=1`` in the environment: the installed
``engine-weave.pth`` then calls :func:`install` as soon as weave is imported)::

    import engine.integrations.weave; engine.integrations.weave.install()

What it changes (see ``docs/peers-weave-0.54.md`` §5 for the hook points):

- weave builds its trace server with
  ``weave.trace_server_bindings.remote_http_trace_server.RemoteHTTPTraceServer.from_env``,
  looked up when ``weave.init`` runs (0.53: by default its
  ``stainless_remote_http_trace_server.StainlessRemoteHTTPTraceServer``); :func:`install`
  puts a subclass of each, ``EngineTraceServer``, there, and ``weave.init`` says so if it
  ever builds one that is not.
  It is weave's own class with batching off, so weave's call processor (a thread that does
  not survive ``fork``) never exists; call starts, ends and complete calls go into the
  engine's shared-memory ring instead, and every other route (objects, files, reads) still
  uses weave's HTTP client.
- weave defers work (saving an op, building a call's start) to its executors' threads, which a
  forked child does not have: a child that reads a result still pending at the fork (an op's
  ref digest, read by every call of that op) would wait for ever. A before-fork hook waits for
  the client's pending work (at most ``FORK_DRAIN_TIMEOUT_S``); whatever is still pending
  after that fails in the child, logged, instead of hanging it.
- In a forked child, weave's ``FutureExecutor`` still counts the parent's worker threads and
  runs nothing; an after-fork hook replaces the global client's executors with inline ones
  (``max_workers=0``), so ``@weave.op`` in ``multiprocessing.Pool`` workers records its calls.
  The same hook gives the child fresh HTTP clients: kept-alive connections inherited from the
  parent would be written by several processes at once (requests interleave on the socket).
- ``WeaveClient.flush()`` also waits until the engine delivered what was traced so far.
- Feedback (a scorer's result on each prediction of an ``Evaluation``) still goes in batches
  from weave's own feedback processor, as weave alone sends it (batching off made each one a
  request of its own from weave's pool, which fell behind an evaluation); not in children,
  whose queue a fork or ``Pool.terminate()`` would lose.
- weave's disk cache of the server's answers gets a folder per store
  (:mod:`engine.integrations._weave_cache`): with one for every server, objects created
  on one server were never sent to the next (a fresh or wiped ``engine serve``).
- Per-call costs of weave's own ``@weave.op`` go (``is_op`` on every plain value, a
  failed ``import wandb`` per call, two more walks of plain inputs and outputs, its id
  maker, its redaction walk, settings and call-processor lookups, and the thread-pool
  hand-off of a call's start and end that waits for nothing):
  :mod:`engine.integrations._weave_speedups`.

Another weave version never breaks the program: :func:`install` checks that weave has every
hook point above (:func:`missing_hook_points`) and otherwise leaves weave as it is, with one
warning (weave then sends its traces itself).

The engine is created in the process that calls ``weave.init`` and delivers through its
sender process; children write into the same rings: forked ones inherit the engine, and
spawned ``multiprocessing`` children (a ``spawn`` or ``forkserver`` Pool,
``ProcessPoolExecutor``, torch's) that call ``weave.init`` themselves find it through
``$ENGINE_WEAVE_OWNER`` (set by the owner: its pid, URL and ring set, no secret) and write
into its rings instead of starting a sender of their own (one per worker before: ~90 MB and a
start-up each). A child whose owner is gone, or that talks to another URL, starts its own.
A child that writes into another process's engine runs weave's deferred work in the op's
thread: it has no engine whose SIGTERM handler would wait for weave's threads, and
``Pool.terminate()`` kills it at once.
Settings come from ``install(**config)``, ``ENGINE_*`` variables and ``$ENGINE_CONFIG``, as
for :class:`engine.Engine`; the URL and the API key default to weave's own
(``WF_TRACE_SERVER_URL``, its credentials).
"""

from __future__ import annotations

import base64
import binascii
import functools
import importlib
import logging
import multiprocessing
import os
import sys
import threading
import time
import traceback
import warnings
import weakref
from collections.abc import Mapping
from typing import Any

import msgspec

import _engine_weave_hook
from engine.common import _env
from engine.common._errors import ConfigError
from engine.common._http import check_outbound
from engine.common._machine import platform_problem
from engine.common._redact import redact_url
from engine.integrations import _weave_cache, _weave_sigint, _weave_speedups
from engine.producer._engine import (
    Engine,
    before_sigterm_close,
    defer_sigterm_with,
    end_open_calls_with,
    sigterm_time_left,
)
from engine.producer._handle import WritesInFlight, write_end_at_close
from engine.producer._safe import write_safely
from engine.producer._slot import ProducerSettings, lock_held_here
from engine.producer._tracer import Tracer
from engine.ring import RingSpec
from engine.ring import _files as ring_files
from engine.wire._codec import utcnow, uuid7

__all__ = ["install", "installed_engine"]

log = logging.getLogger("engine.integrations.weave")
_PLACEHOLDER_PROJECT = "weave/integration"  # every item names its own project_id
# how long a fork waits for weave's deferred work (op saves go to the server over HTTP)
FORK_DRAIN_TIMEOUT_S = 30.0
# how long SIGTERM waits for it at most (then the engine delivers): half of what is left of
# the owner's sigterm_timeout_s, if less
SIGTERM_DRAIN_TIMEOUT_S = 10.0
FEEDBACK_DRAIN_MIN_S = 2.0  # ... and for the feedback weave's processor queues, at least this
_STACK_DEPTH = 6  # innermost frames of each weave thread, said when its work does not finish
_ENGINE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_OFF = frozenset(("0", "false", "no", "off"))

# what a spawned child needs to write into its owner's rings (see the module docstring)
OWNER_ENV = _env.WEAVE_OWNER

_lock = threading.Lock()
_config: dict[str, Any] = {}
_engine: Engine | None = None
_tracer: Tracer | None = None
_owner_flush_s = 0.0  # a child writing into its owner's engine: the owner's delivery deadline
_installed = False
_refused = False  # this weave lacks hook points: said once
_servers: weakref.WeakSet[Any] = weakref.WeakSet()
_bypass_said = threading.Event()


def install(*, weave_speedups: bool | None = None, **config: Any) -> bool:
    """Route weave's call ingest through an engine; call before ``weave.init``. True once
    installed.

    ``config`` overrides :class:`engine.EngineConfig` settings (e.g. ``spool_dir=...``);
    idempotent (a second call only updates the settings for an engine not yet started).
    ``weave_speedups`` (default: on, unless ``ENGINE_WEAVE_SPEEDUPS=0``) also removes
    per-call costs of ``@weave.op`` without changing what weave computes
    (:mod:`engine.integrations._weave_speedups`).

    Never raises over weave's version: a weave without the hook points the integration uses
    (the :data:`TESTED_WEAVE` versions have them all) is left as it is, said once in a warning naming what
    it lacks, and sends its traces itself (False); another version that has them all is
    installed, with a warning that it was not tested.
    """
    global _installed, _refused
    if weave_speedups is None:
        weave_speedups = os.environ.get(_env.WEAVE_SPEEDUPS, "1").strip().lower() not in _OFF
    # weave imported before the lock is taken: with ENGINE_WEAVE set, its first import runs
    # install() itself (_engine_weave_hook), which waited for ever on this lock when the
    # program called install() before importing weave (a notebook kernel with ENGINE_WEAVE=1
    # and the line above weave.init: the cell never ended)
    version = weave_version()
    with _lock:
        _config.update(config)
        if _installed:
            return True
        if _refused:
            return False
        missing = missing_hook_points()
        if missing:
            _refused = True
            log.warning("weave %s lacks what the engine's weave integration hooks into (%s): "
                        "not installed, weave sends its traces itself. The integration is "
                        "tested with weave %s", version, ", ".join(missing), tested_versions())
            return False
        unsupported = platform_problem()
        if unsupported:
            _refused = True
            log.warning("%s: the weave integration is not installed, weave sends its traces "
                        "itself", unsupported)
            return False
        unreachable = _outbound_problem()
        if unreachable:
            _refused = True
            log.warning("the engine cannot connect the way this process's weave would (%s): "
                        "the weave integration is not installed, weave sends its traces "
                        "itself", unreachable)
            return False
        if not is_tested(version):
            log.warning("weave %s: the engine's weave integration is tested with weave %s; "
                        "installed, as this weave has every hook point it uses", version,
                        tested_versions())
        present = _server_classes()
        # one subclass per class of weave's (0.54 has one under two names)
        engine_classes = {base: _engine_server_class(base) for _, _, base in present}
        os.register_at_fork(before=_drain_before_fork, after_in_child=_after_fork_in_child)
        before_sigterm_close(_drain_on_sigterm)
        end_open_calls_with(_end_open_calls, _writing.cut)
        defer_sigterm_with(_weave_sigint.defer_if_guarded)
        from weave.trace import util as weave_util
        from weave.trace.concurrent import futures as weave_futures

        _weave_sigint.install(weave_futures, weave_util)
        # a send made in the op's thread (the speedups) may hold the ring writer's lock,
        # which the sends weave's threads make need: SIGTERM's drain waits for those
        _weave_sigint.defer_while(lock_held_here)
        _wrap_client_flush()
        _wrap_client_init()
        for module, name, base in present:
            setattr(importlib.import_module(module), name, engine_classes[base])
        _watch_server_choice(tuple(engine_classes.values()))
        if weave_speedups:
            _weave_speedups.apply(engine_server=_is_engine_server)
        _installed = True
        return True


def _outbound_problem() -> str | None:
    """What the engine's sender could not connect with toward the server weave will use (a
    socks proxy in ALL_PROXY, which weave's httpx may take; CA variables naming nothing
    loadable), so that ``weave.init`` never raises over the environment weave itself runs
    with: the integration stands aside instead. None when there is nothing to say."""
    try:
        from weave.trace.env import weave_trace_server_url

        url = str(_config.get("url") or weave_trace_server_url())
    except Exception:  # a weave without it (the hook points were checked) or odd settings:
        return None  # Engine() at weave.init says what is wrong, as before
    try:
        check_outbound(url)
    except ConfigError as exc:
        return str(exc)
    return None


# the weave minor versions the integration is tested with (tests/integrations: 0.54.0 in
# the project's venv, 0.53.13 in the one scripts/test builds from requirements-w53.lock)
TESTED_WEAVE = ("0.54", "0.53")
# The classes weave builds its trace server from (``weave_init`` looks them up in their
# modules when ``weave.init`` runs): 0.54 has one; 0.53 two, chosen by its settings (the
# Stainless one by default; the older one with WEAVE_USE_STAINLESS_SERVER=false). Each one
# this weave has is replaced by a subclass that writes calls into the engine.
_SERVER_CLASSES = (
    ("weave.trace_server_bindings.remote_http_trace_server", "RemoteHTTPTraceServer"),
    ("weave.trace_server_bindings.stainless_remote_http_trace_server",
     "StainlessRemoteHTTPTraceServer"),
)
_SERVER_METHODS = ("set_auth", "call_start", "call_end", "calls_complete", "call_start_batch")
# a server class without ``_rebuild_client`` (0.53's older one) sends through one cached
# httpx client per process, which a forked child clears
_HTTP_CLIENT_CACHE = ("weave.utils.http_requests", "_build_client.cache_clear")
# (module, attribute path) of the rest the integration replaces, subclasses or calls
_HOOK_POINTS = (
    ("weave.vendor.weave_server_sdk.types", "CallStartResponse"),
    ("weave.trace.weave_client", "WeaveClient._flush"),
    ("weave.trace.concurrent.futures", "FutureExecutor.flush"),
    ("weave.trace.context.weave_client_context", "get_weave_client"),
)


def missing_hook_points() -> list[str]:
    """The hook points this weave lacks (``module:attribute``; empty: it has them all)."""
    present = _server_classes()
    module, name = _SERVER_CLASSES[0]
    missing = [] if present and present[0][:2] == (module, name) else [f"{module}:{name}"]
    # each class once, under its first name (reversed: the first one written last wins)
    for module, name, server_class in {c: (m, n, c) for m, n, c in reversed(present)}.values():
        missing += [f"{module}:{name}.{method}" for method in _SERVER_METHODS
                    if getattr(server_class, method, None) is None]  # fmt: skip
        if not hasattr(server_class, "_rebuild_client") and _hook_point(*_HTTP_CLIENT_CACHE) is None:
            missing.append(f"{module}:{name}._rebuild_client or {':'.join(_HTTP_CLIENT_CACHE)}")
    missing += [f"{module}:{path}" for module, path in _HOOK_POINTS
                if _hook_point(module, path) is None]  # fmt: skip
    return sorted(set(missing))


def _server_classes() -> list[tuple[str, str, type]]:
    """(module, name, class) of each of ``_SERVER_CLASSES`` this weave has."""
    found = [(module, name, _hook_point(module, name)) for module, name in _SERVER_CLASSES]
    return [(module, name, cls) for module, name, cls in found if cls is not None]


def _hook_point(module_name: str, path: str) -> Any:
    """The object at ``module_name:path``, or None where this weave has none. Looking
    prints none of weave's deprecation warnings (0.54 keeps 0.53's Stainless module as a
    deprecated alias)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))
            found: Any = importlib.import_module(module_name)
    except ImportError:
        return None
    for part in path.split("."):
        found = getattr(found, part, None)
        if found is None:
            return None
    return found


def is_tested(version: str) -> bool:
    return version.startswith(tuple(minor + "." for minor in TESTED_WEAVE))


def tested_versions() -> str:
    """The tested weave versions, for messages ("0.53.x or 0.54.x")."""
    return " or ".join(f"{minor}.x" for minor in sorted(TESTED_WEAVE))


def weave_version() -> str:
    import weave

    return str(getattr(weave, "__version__", "unknown"))


def installed_engine() -> Engine | None:
    """The engine weave's calls go through in this process tree (None before ``weave.init``,
    and in a spawned child that writes into its parent's engine)."""
    return _engine


def _engine_server_class(base: type) -> type:
    from weave.vendor.weave_server_sdk.types import CallStartResponse

    class _EngineTraceServer(base):  # type: ignore[valid-type,misc]
        """weave's HTTP trace server, with call ingest going into the engine's ring."""

        def __init__(self, trace_server_url: str, should_batch: bool = False, **kw: Any) -> None:
            super().__init__(trace_server_url, should_batch=False, **kw)
            _servers.add(self)
            if should_batch:
                _batch_feedback(self, base)

        # weave's own batching is off (calls go into the engine's ring), but for feedback
        # inside feedback_create below: weave's batched branch there, in this thread only
        @property
        def should_batch(self) -> bool:
            return getattr(_feedback_batching, "on", False)

        @should_batch.setter
        def should_batch(self, value: bool) -> None:
            pass

        def feedback_create(self, req: Any) -> Any:
            if getattr(self, "feedback_processor", None) is None:
                return super().feedback_create(req)
            _feedback_batching.on = True
            try:
                return super().feedback_create(req)
            finally:
                _feedback_batching.on = False

        def set_auth(self, auth: Any) -> None:
            super().set_auth(auth)
            # weave.init sets the credentials right after building us, in the owner process,
            # and builds its disk cache of the server's answers after that
            # 0.54 keeps the credentials (a tuple made one); 0.53 gets them as they are
            api_key = _api_key_of(getattr(self, "_credentials", auth))
            _weave_cache.key_by_store(self.trace_server_url, api_key)
            _ensure_engine(self.trace_server_url, api_key)

        def call_start(self, req: Mapping[str, Any]) -> Any:
            start = _with_ids(req["start"])
            _start(_tracer_for(self), start)
            return CallStartResponse(id=start["id"], trace_id=start["trace_id"])

        def call_end(self, req: Mapping[str, Any]) -> Any:
            _end(_tracer_for(self), dict(req["end"]))
            return {}

        def calls_complete(self, req: Mapping[str, Any]) -> Any:
            tracer = _tracer_for(self)
            for call in req["batch"]:
                _write(tracer, dict(call), "call")
            return {}

        def call_start_batch(self, req: Mapping[str, Any]) -> Any:
            tracer = _tracer_for(self)
            results: list[dict[str, Any]] = []
            for entry in req["batch"]:
                if entry["mode"] == "start":
                    start = _with_ids(entry["req"]["start"])
                    _start(tracer, start)
                    results.append({"id": start["id"], "trace_id": start["trace_id"]})
                else:
                    _end(tracer, dict(entry["req"]["end"]))
                    results.append({})
            return {"res": results}

    _EngineTraceServer.__name__ = _EngineTraceServer.__qualname__ = "EngineTraceServer"
    return _EngineTraceServer


_feedback_batching = threading.local()


def _batch_feedback(server: Any, base: type) -> None:
    """Feedback (a scorer's result, one per scorer per prediction of an ``Evaluation``) is
    queued and sent in batches by weave's own processor thread, as weave alone sends it,
    instead of one request each from weave's pool (which fell behind an evaluation: 5,752
    requests of ~10 ms against engine serve, the 1,000-row evaluation's flush waiting
    15-20 s; a distant server, minutes). Not in a child writing into its owner's engine:
    ``Pool.terminate()`` kills it at once, and a queue would lose what it held."""
    if _owner_for(server.trace_server_url) is not None:
        return
    try:
        weaves = importlib.import_module(base.__module__)
        server.feedback_processor = weaves.AsyncBatchProcessor(
            server._flush_feedback, max_queue_size=weaves.max_calls_queue_size(),
            enable_disk_fallback=weaves.should_enable_disk_fallback())  # fmt: skip
    except AttributeError as exc:  # another layout: one request per feedback, as before
        log.debug("weave feedback is not batched: %s", exc)


def _is_engine_server(server: Any) -> bool:
    """Whether ``server`` (weave's client's: its caching middleware around ours, or ours)
    writes call starts and ends into the engine's ring."""
    inner = getattr(server, "__dict__", {}).get("_next_trace_server", server)
    try:
        return inner in _servers
    except TypeError:  # not weakly referenceable: not one of ours
        return False


def _with_ids(start: Mapping[str, Any]) -> dict[str, Any]:
    """weave names its calls; a start without ids gets them here, so weave hears them back
    whatever happens to the write."""
    start = dict(start)
    start["id"] = start.get("id") or uuid7()
    start["trace_id"] = start.get("trace_id") or uuid7()
    return start


def _write(tracer: Tracer, item: dict[str, Any], what: str) -> bool:
    """Into the ring; tracing never fails weave's call: what the tracer cannot take is
    sanitised and counted, or dropped and logged (engine/producer/_safe.py). False if
    dropped."""
    write = {"start": tracer.call_start, "end": tracer.call_end,
             "call": tracer.call_complete}[what]  # fmt: skip
    try:
        write(item)
    except Exception as exc:
        return write_safely(tracer, item, what, exc)
    return True


# weave's calls started in this process and not ended yet: call id -> [the tracer, the
# fields an end repeats, whether its start is written yet]. The engine's close ends those
# still open then (the evaluation a SIGTERM interrupted, a daemon thread's op as the program
# exits), saying why; without it they showed as running on the server for good. weave's
# threads can hand a call's end over while its start is still being written (or before):
# an end that finds no start keeps its id, so that the start, when it comes, is not taken
# for an open call. The ids the close ended: weave's own end of one, if it comes after, is
# not written (the engine is closed) nor said.
_open_lock = threading.RLock()  # (a SIGTERM handler's close may run inside _start/_end)
_open_calls: dict[str, list] = {}
_ended_first: set[str] = set()
_ENDED_FIRST_MAX = 10_000  # ends whose start never came this way (a start weave dropped)
_ended_at_close: set[str] = set()
_writing = WritesInFlight()  # weave's starts and ends being written (see _start, _end)


def _start(tracer: Tracer, start: dict[str, Any]) -> None:
    call_id = start["id"]
    with _writing:  # written and marked started as one step for the engine's close
        with _open_lock:
            ended = call_id in _ended_first
            if ended:
                _ended_first.discard(call_id)
            else:
                entry = _open_calls[call_id] = [tracer, {
                    "project_id": start.get("project_id"), "id": call_id,
                    "trace_id": start.get("trace_id"), "started_at": start.get("started_at")},
                    False]
        if not _write(tracer, start, "start"):
            _open_calls.pop(call_id, None)  # not started: nothing to end
        elif not ended:
            entry[2] = True  # the close may end it now (not before: an end with no start)


def _end(tracer: Tracer, end: dict[str, Any]) -> None:
    call_id = end.get("id")
    with _writing:  # taken from the open calls and written as one step
        with _open_lock:
            if _open_calls.pop(call_id, None) is None:
                if call_id in _ended_at_close:  # the close ended it: its engine is closed
                    _ended_at_close.discard(call_id)
                    return
                if len(_ended_first) >= _ENDED_FIRST_MAX:
                    _ended_first.clear()
                _ended_first.add(call_id)
        _write(tracer, end, "end")


def _end_open_calls(spec: RingSpec, exception: str) -> int:
    """The engine writing into ``spec`` closes: end weave's calls still open through it
    (engine.producer._engine's ``end_open_calls_with``). Returns how many it ended."""
    ended = 0
    for call_id, (tracer, fields, started) in list(_open_calls.items()):
        if not started or getattr(tracer, "_spec", None) != spec:
            continue  # another engine's, or its start not written (refused now: closed)
        with _open_lock:
            if _open_calls.pop(call_id, None) is None:
                continue  # weave ended it meanwhile
            _ended_at_close.add(call_id)
        ended += write_end_at_close(tracer, {
            **fields, "ended_at": utcnow(),
            "exception": exception, "summary": {}})
    return ended


def _api_key_of(credentials: Any) -> str | None:
    """The key inside weave's ``Basic api:<key>`` credentials (other schemes: none)."""
    header = getattr(credentials, "authorization_header", None)
    if not callable(header):
        return None
    scheme, _, encoded = str(header()).partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        return base64.b64decode(encoded).decode().partition(":")[2] or None
    except (binascii.Error, UnicodeDecodeError):
        return None


class _Owner(msgspec.Struct, frozen=True):
    """``$ENGINE_WEAVE_OWNER``: the process whose engine spawned children write into."""

    pid: int
    start_ticks: int  # with the pid: that process, not a later one given its pid
    url: str
    spec: RingSpec
    settings: ProducerSettings
    flush_s: float  # its delivery_deadline_s: how long a child's flush waits


def _ensure_engine(url: str, api_key: str | None) -> None:
    global _engine, _tracer, _owner_flush_s
    with _lock:
        if _tracer is not None:
            return
        owner = _owner_for(url)
        if owner is not None:
            _tracer, _owner_flush_s = Tracer(owner.spec, owner.settings), owner.flush_s
            log.info("weave calls go through the engine of process %d", owner.pid)
            return
        settings = {"url": url, "project": _PLACEHOLDER_PROJECT, "api_key": api_key, **_config}
        _engine = Engine(**settings)
        _tracer = _engine.producer()
        pid = os.getpid()
        os.environ[OWNER_ENV] = msgspec.json.encode(_Owner(
            pid, ring_files.process_start_ticks(pid) or 0, url, _tracer._spec,
            _tracer._settings, _engine.config.delivery_deadline_s)).decode()  # fmt: skip
        log.info("weave calls go through the engine", extra={"upstream": redact_url(_engine.config.url)})


def _owner_for(url: str) -> _Owner | None:
    """The engine of the process that started this one, if this is a ``multiprocessing``
    child, that process still runs, its engine is open and delivers to ``url``."""
    text = os.environ.get(OWNER_ENV)
    if not text or multiprocessing.parent_process() is None:
        return None
    try:
        owner = msgspec.json.decode(text, type=_Owner)
    except msgspec.DecodeError as exc:
        log.warning("$%s is not what weave.init in the parent wrote (%s); starting an engine "
                    "of this process's own", OWNER_ENV, exc)
        return None
    if (owner.url != url or owner.pid == os.getpid()
            or not ring_files.is_alive(owner.pid, owner.start_ticks)):
        return None
    if not os.path.exists(owner.spec.lock_path):  # its engine was closed since
        return None
    return owner


def _tracer_for(server: Any) -> Tracer:
    if _tracer is None:  # built without set_auth (no credentials): start the engine now
        _ensure_engine(server.trace_server_url, None)
    assert _tracer is not None
    return _tracer


def _watch_server_choice(engine_classes: tuple[type, ...]) -> None:
    """Says it (once) when ``weave.init`` builds its trace server from a class the
    integration did not replace: that weave's calls would bypass the engine unnoticed."""
    from weave.trace import weave_init

    original = getattr(weave_init, "init_weave_get_server", None)
    if original is None:  # nothing to watch in this weave; the hook points were checked
        return

    @functools.wraps(original)
    def init_weave_get_server(*args: Any, **kwargs: Any) -> Any:
        server = original(*args, **kwargs)
        if not isinstance(server, engine_classes) and not _bypass_said.is_set():
            _bypass_said.set()
            log.warning("weave %s built its trace server from %s, which the engine's weave "
                        "integration does not replace: its calls go through weave's own "
                        "client, not the engine", weave_version(), type(server).__qualname__)
        return server

    weave_init.init_weave_get_server = init_weave_get_server


def _wrap_client_flush() -> None:
    from weave.trace.weave_client import WeaveClient

    original = WeaveClient._flush

    @functools.wraps(original)
    def flush_then_deliver(self: Any) -> None:
        original(self)
        _deliver_traced()

    WeaveClient._flush = flush_then_deliver


def _wrap_client_init() -> None:
    from weave.trace.weave_client import WeaveClient

    original = WeaveClient.__init__

    @functools.wraps(original)
    def init_then_inline_in_children(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if _writes_into_another_process():
            _inline_executors(self)

    WeaveClient.__init__ = init_then_inline_in_children


def _writes_into_another_process() -> bool:
    """This process writes weave's calls into an engine another process owns: a child
    (spawned, found through ``$ENGINE_WEAVE_OWNER``; or forked)."""
    return _tracer is not None and (_engine is None or _engine._owner_pid != os.getpid())


def _deliver_traced(timeout_s: float | None = None) -> None:
    """Owner: wait for every process's items; a child: for its own (the owner delivers)."""
    engine, tracer = _engine, _tracer
    if tracer is None:
        return
    if timeout_s is None:
        timeout_s = engine.config.delivery_deadline_s if engine is not None else _owner_flush_s
    if engine is not None and os.getpid() == engine._owner_pid:
        delivered = engine.flush(timeout_s)
    else:
        delivered = tracer.flush(timeout_s)
    if not delivered:
        log.warning("weave flush: engine did not deliver everything within %.0f s", timeout_s)


def _weave_client() -> Any:
    from weave.trace.context.weave_client_context import get_weave_client

    return get_weave_client()


def _executors(client: Any) -> list[Any]:
    fastlane = getattr(client, "future_executor_fastlane", None)
    return [client.future_executor] + ([fastlane] if fastlane is not None else [])


def _drain_before_fork() -> None:
    """Let weave's executor threads finish what they hold, so the child inherits results
    instead of futures nobody will complete (and no thread mid-import). Never raises: an
    exception here would only be printed by ``os.fork``."""
    _drain_executors(FORK_DRAIN_TIMEOUT_S, "at fork", "a forked child fails it instead of "
                     "waiting")


def _drain_on_sigterm() -> None:
    """SIGTERM (an orchestrator or ``timeout`` stopping the job): weave's executor threads
    still hold call starts and ends not yet handed to the engine (hundreds in a busy eval
    loop); they finish, bounded, before the engine delivers and closes (engine.producer's
    SIGTERM handler runs this first). The handler runs on the main thread between two
    bytecodes: inside weave's hand-off to its pool (whose locks the threads need) it runs
    at the first line after it (``_weave_sigint.defer_if_guarded``); where the interrupted
    code holds an executor's lock itself, that executor's flush would wait on itself, so it
    is skipped."""
    timeout_s = min(SIGTERM_DRAIN_TIMEOUT_S, sigterm_time_left(SIGTERM_DRAIN_TIMEOUT_S) / 2)
    deadline_s = time.monotonic() + timeout_s
    _drain_executors(timeout_s, "at SIGTERM", "its calls are not traced", lock_probe_s=0.5)
    # the feedback the executors just queued: what is left of the drain's time, or at least
    # a batch interval and a send (weave's processor sleeps 1 s between batches)
    feedback_s = max(deadline_s - time.monotonic(),
                     min(FEEDBACK_DRAIN_MIN_S, sigterm_time_left(FEEDBACK_DRAIN_MIN_S) / 2))
    _drain_feedback(time.monotonic() + feedback_s)


def _drain_feedback(deadline_s: float) -> None:
    """Send the feedback weave's processor still queues, until ``deadline_s``: at SIGTERM
    the process ends without weave's exit flush."""
    for server in list(_servers):
        processor = getattr(server, "feedback_processor", None)
        if processor is None:
            continue
        processor.stop_accepting_work_event.set()  # its thread sends what is queued, then ends
        processor.processing_thread.join(max(0.0, deadline_s - time.monotonic()))
        if processor.processing_thread.is_alive():
            log.warning("weave feedback still pending at SIGTERM (%d items queued, a batch "
                        "may be on its way); it is not sent", processor.num_outstanding_jobs)


def _drain_executors(timeout_s: float, when: str, otherwise: str,
                     lock_probe_s: float | None = None) -> None:
    client = _weave_client()
    if client is None:
        return
    deadline_s = time.monotonic() + timeout_s
    for executor in _executors(client):
        if executor._in_thread_context.get():
            continue  # called from weave's own thread: what it waits for cannot finish
        lock = getattr(executor, "_active_futures_lock", None) if lock_probe_s else None
        if lock is not None:
            if not lock.acquire(timeout=lock_probe_s):
                log.warning("weave work still pending %s (its executor is busy in the "
                            "interrupted code); %s", when, otherwise)
                continue
            lock.release()
        try:
            executor.flush(timeout=max(0.0, deadline_s - time.monotonic()))
        except Exception as exc:  # a timeout, or a task's error re-raised in weave's tests
            log.warning("weave work still pending %s (%s: %s); %s; %s", when,
                        type(exc).__name__, exc, otherwise, _where_weave_threads_are())


def _where_weave_threads_are() -> str:
    """Where each of weave's pool threads is, and where this thread was interrupted (the
    innermost frames outside the engine): what held weave's work when it did not finish."""
    frames = sys._current_frames()
    places = []
    for thread in threading.enumerate():
        frame = frames.get(thread.ident or -1)
        if frame is not None and thread.name.startswith("WeaveThreadPool"):
            idle = frame.f_code.co_name == "_worker"  # waiting for work (in C)
            places.append(f"{thread.name} {'idle' if idle else 'at ' + _innermost(frame)}")
    frame = sys._getframe()
    while frame is not None and frame.f_code.co_filename.startswith(_ENGINE_DIR):
        frame = frame.f_back
    return ("weave's threads: " + ("; ".join(places) if places else "none running")
            + f"; {threading.current_thread().name} was at "
            + (_innermost(frame) if frame is not None else "the engine's code"))


def _innermost(frame: Any) -> str:
    stack = traceback.extract_stack(frame)[-_STACK_DEPTH:]
    return " < ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}"
                      for f in reversed(stack))


def _after_fork_in_child() -> None:
    """What weave shares with its parent after a fork is unusable in the child: the HTTP
    connections (two processes writing one socket interleave their requests) and the thread
    pools (their threads are gone). Fresh HTTP clients; deferred work runs inline."""
    global _open_lock
    try:
        for server in list(_servers):
            if hasattr(server, "_rebuild_client"):
                server._rebuild_client()
        clear_http_clients = _hook_point(*_HTTP_CLIENT_CACHE)
        if clear_http_clients is not None:  # 0.53: the next request builds a new client
            clear_http_clients()
    except Exception as exc:  # an at-fork hook's error is only printed: say it once
        log.warning("forked child: weave's HTTP client was not rebuilt (%s: %s); its "
                    "requests may interleave with the parent's", type(exc).__name__, exc)
    for server in list(_servers):  # the parent's processor thread sends what it queued
        server.feedback_processor = None
    _open_lock = threading.RLock()  # a thread of the parent's may have held it
    _open_calls.clear()  # the parent's calls: its own to end
    _ended_first.clear()
    _ended_at_close.clear()
    client = _weave_client()
    if client is not None:
        client._server_feedback_processor = None
        _fail_orphaned_futures(client)
        _inline_executors(client)


def _fail_orphaned_futures(client: Any) -> None:
    """Futures the parent's threads were still working on at the fork never complete here:
    fail them, so what waits on them (an op's digest) raises and weave logs it, not a hang."""
    orphaned = [f for executor in _executors(client)
                for f in list(executor._active_futures) if not f.done()]  # fmt: skip
    for future in orphaned:
        future.set_exception(RuntimeError("weave work of the parent process was still pending "
                                          "when this process was forked"))
    if orphaned:
        log.warning("forked child: %d weave tasks of the parent were still pending and fail "
                    "here (their calls are not traced)", len(orphaned))


def _inline_executors(client: Any) -> None:
    """weave's deferred work runs in the calling thread, each call written into the ring
    before its op returns: a child -- forked, or spawned and writing into its owner's engine
    -- has no engine of its own to wait for weave's threads at SIGTERM, and
    ``Pool.terminate()`` (a ``with Pool(...)`` block's end) kills it at once (before: the
    calls its threads still held were lost, ~1 in 200 of a spawned worker's)."""
    from weave.trace.concurrent.futures import FutureExecutor

    client.future_executor = FutureExecutor(max_workers=0)
    if getattr(client, "future_executor_fastlane", None) is not None:
        client.future_executor_fastlane = FutureExecutor(max_workers=0)


if _engine_weave_hook.enabled():  # installs without engine-weave.pth (a source checkout)
    install()
