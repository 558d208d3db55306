"""Per-call costs of weave 0.54.0's ``@weave.op`` that :func:`install` removes without
changing what weave computes (measured on Python 3.11: ~1,100 → ~250 µs of CPU per traced
4 KB call; ``python -m bench.weave_op``).

- **is_op**: weave walks every input and output value (``_save_nested_objects``) and asks
  ``is_op(value)`` of each; on Python < 3.12 that is ``isinstance(value, Op)`` against a
  runtime-checkable ``Protocol``, which rebuilds the protocol's attribute list on every call
  (~20 µs each, ~35 values per eval call). A value whose type is exactly ``str``, ``int``,
  ``float``, ``bool``, ``None``, ``dict``, ``list`` or ``tuple`` has none of ``Op``'s
  attributes (instances of those types carry no attributes of their own), so it is not an
  Op: answered at once. Every other value goes to weave's own ``is_op``.
- **the W&B run**: every call asks for the active ``wandb.run`` by running ``import wandb``;
  where wandb is not installed that import fails again each time, searching ``sys.path``
  (~100 µs). A W&B run exists only once the program imported wandb (``wandb.init``), so the
  answer is read from ``sys.modules``: ``wandb.run`` when wandb was imported, else None
  (where wandb is installed but not imported, weave would import it, for the same None).

- **an op is an op**: a value that is not of those types still goes to weave's ``is_op``
  (the op itself, once or twice per call: ~16 µs each); once weave said yes for an object
  (a function weave made into an op), the answer is kept for that object (by identity,
  while it lives): weave never takes an op's attributes away. A no is asked again.
- **plain values**: every input and output is walked twice more per call:
  ``WeaveClient._save_nested_objects`` (finds weave objects, ops and tables inside, to save
  them) and ``map_to_refs`` (a copy with those replaced by their refs). A tree of only
  exact ``dict``, ``list``, ``tuple``, ``str``, ``int``, ``float``, ``bool`` and ``None``
  holds none of them: weave's walk does nothing there (no ref, no case matches; it only
  descends) and its copy is the same tree with new dicts and lists (tuples become lists),
  the leaves shared. One look at the types answers that: :func:`plain` (bounded) before
  the walk, then nothing to save; :func:`plain_copy` makes the copy in the same pass that
  looks. Anything else (a dict subclass, a pydantic model, a dataset row's ref, a cycle,
  more than ``PLAIN_MAX_VALUES`` values for the walk) goes to weave's own.

- **call ids**: weave makes each call's id (UUIDv7) from ``os.urandom`` and a hex string
  built byte by byte (~4 µs, two per call); the engine's own UUIDv7 (the same format:
  millisecond time first, version 7, RFC variant; unique per process and after a fork,
  not secret, as ids need not be) takes ~0.05 µs with the C accelerator, 0.4 without.

- **sensitive keys**: ``redact_sensitive_keys`` walks every input asking ``get_ref``,
  ``isinstance`` and ``dataclasses.is_dataclass`` of each value and ``should_redact`` of each
  str key (~13 µs for the bench's inputs): a plain tree (as above; keys exact ``str`` or plain
  leaves) gets the same copy in one walk (~5 µs), tuples kept, the value of a key whose lower
  case is in weave's own ``_REDACT_KEYS`` set replaced by its ``REDACTED_VALUE``; anything
  else, or a ``should_redact`` the program replaced, goes to weave's.
- **settings from the environment**: 8 reads per call (``WEAVE_DISABLED`` three times,
  ``WEAVE_REDACT_PII`` twice, ...) each through ``os.getenv``'s ``Mapping.get`` chain (~1 µs);
  the variable's key is looked up in ``os.environ``'s own store (~0.3 µs), a value that is
  there decoded and parsed by weave's own code. A program that replaced ``os.environ`` with
  another mapping gets weave's read.
- **the call processor**: ``_get_call_processor`` (3 per call) asks weave's caching middleware
  through its Python ``__getattribute__`` (a miss, an ``AttributeError``, then the wrapped
  server, twice: ~4 µs); where nothing of the middleware's own (its instance, its classes,
  its ``optional_delegated_methods``) has that name and it delegates with weave's own mixin,
  every route there ends in the wrapped server's answer: asked of it directly (~1.4 µs).

- **the hand-off of a call's start and end**: weave defers each to its thread pool (a
  ``Future``, a context copy, the pool's queue and locks, a worker's wake-up; then the three
  workers contend for the engine's slot lock) to do work that, with the engine, is building
  the request and a ring write of microseconds. A send that waits for nothing -- weave's own
  ``send_start_call``/``send_end_call`` (found by their code in ``create_call`` and
  ``finish_call``), its op's ref already digested, its values plain (no ref to wait for), no
  write-ahead log, the client's own pool, a server that is the engine's -- runs in the op's
  thread as the pool would run it: in a copy of the caller's context, its result or
  ``Exception`` in a future tracked by weave's own ``_track_future`` (a failure logs weave's "Task failed" line
  at ERROR, before weave's done-callback, as from the pool). What the program sees is one of
  the orders the pool allows (the worker running the send at once): the same values
  returned, the same exceptions, the same calls stored, weave's done-callbacks (the call
  link) on the op's thread instead of a worker's, before the op's body runs. Any other send
  (an op's first call, whose digest is still being computed; refs in the values) goes to the
  pool. What differs: the send's CPU is the op's thread's (the process pays less in all:
  ~470 → ~250 µs per call), and where the engine's ring stays full (a server slower than
  the program for longer than the ring holds) the op's thread waits as every engine
  producer does (``on_full``), instead of weave's pool queueing without bound; a
  ``KeyboardInterrupt`` landing in the send raises from the op's call (the send not made),
  as it could land anywhere else in weave's ``create_call``. Such a send defers nothing, so
  it is not marked as weave's own thread: a signal handler landing in it runs as in the
  program's thread it is (the engine's SIGTERM drain still waits for the pool; a handler's
  ``weave.finish()`` works), but not while the send holds the engine's ring lock (its
  doorbell, a full ring), which the pool's sends need: there it runs once the lock is given
  back (``_weave_sigint.defer_while``; before, the SIGTERM drain timed out waiting for the
  pool and the calls it held were lost: 2 of ~12 SIGTERMs to a 1,000-row ``Evaluation``).

Each is applied only where weave has the function it replaces, named as in 0.54.0; a weave
that lacks one keeps its own (logged at debug). ``install(weave_speedups=False)`` or
``ENGINE_WEAVE_SPEEDUPS=0`` keeps weave's own for all of them.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import os
import sys
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

log = logging.getLogger("engine.integrations.weave")

NEVER_OPS = frozenset((str, int, float, bool, type(None), dict, list, tuple))


PLAIN_LEAVES = frozenset((str, int, float, bool, type(None)))
PLAIN_MAX_VALUES = 100_000  # a bigger tree (or a list that holds itself) is weave's to walk
_KNOWN_OPS_MAX = 10_000


def plain(value: Any) -> bool:
    """Whether ``value`` is a tree of only exact dicts, lists, tuples and plain leaves
    (``PLAIN_LEAVES``), with at most ``PLAIN_MAX_VALUES`` values."""
    if type(value) in PLAIN_LEAVES:
        return True
    leaves, stack, seen = PLAIN_LEAVES, [value], 0
    pop, extend = stack.pop, stack.extend
    while stack:
        item = pop()
        kind = type(item)
        if kind is dict:
            seen += len(item)
            extend(item.values())
        elif kind is list or kind is tuple:
            seen += len(item)
            extend(item)
        elif kind not in leaves:
            return False
        if seen > PLAIN_MAX_VALUES:
            return False
    return True


class NotPlain(Exception):
    """:func:`plain_copy` met a value that is not plain: the tree is weave's to map."""


def plain_copy(value: Any) -> Any:
    """weave's ``map_to_refs`` of a plain tree, made in the same walk that finds it plain:
    new dicts and lists (tuples become lists), the leaves as they are; ``NotPlain`` at the
    first other value (a list holding itself ends in ``RecursionError``, as in weave's)."""
    kind = type(value)
    if kind is dict:
        return {k: plain_copy(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [plain_copy(v) for v in value]
    if kind in PLAIN_LEAVES:
        return value
    raise NotPlain


def apply(engine_server: Callable[[Any], bool] = lambda server: False) -> None:
    """Replace what can be replaced (what cannot is logged at debug; another weave's
    layout never fails the install). ``engine_server(server)``: whether a client's server
    writes its calls into the engine's ring (the sends that are run where they are made)."""
    for speedup in (_is_op, _wandb_run, _nested_objects, _map_to_refs, _redact, _ids,
                    _settings_env, _call_processor):
        try:
            speedup()
        except (ImportError, AttributeError) as exc:
            log.debug("weave speed-up %s left out: %s", speedup.__name__, exc)
    try:
        _sends_in_place(engine_server)
    except (ImportError, AttributeError) as exc:
        log.debug("weave speed-up _sends_in_place left out: %s", exc)


def _replace(owner: Any, name: str, make: Callable[[Any], Any], *,
             everywhere: bool = False) -> None:
    """Put ``make(weaves)`` where weave's ``owner.name`` is (and, ``everywhere``, in every
    weave module that took it by name); a weave without it keeps its own, logged at debug."""
    # a class's own attribute: what it inherits is not weave's to replace here
    weaves = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name, None)
    if not callable(weaves) or getattr(weaves, "__name__", "") != name:
        log.debug("weave has no %s.%s: left as it is", owner.__name__, name)
        return
    fast = make(weaves)
    fast.__doc__ = weaves.__doc__
    fast.__wrapped__ = weaves
    setattr(owner, name, fast)
    if everywhere:
        for module_name, module in list(sys.modules.items()):
            if (module_name == "weave" or module_name.startswith("weave.")) and \
                    getattr(module, name, None) is weaves:
                setattr(module, name, fast)


def _is_op() -> None:
    from weave.trace import op as weave_op

    def make(weaves: Any) -> Any:
        known: dict[int, weakref.ref[Any]] = {}  # id -> the object weave said is an op

        def is_op(obj: Any, _weaves: Any = weaves, _never: frozenset[type] = NEVER_OPS) -> bool:
            if type(obj) in _never:
                return False
            seen = known.get(id(obj))
            if seen is not None and seen() is obj:
                return True
            answer = _weaves(obj)
            if answer:
                try:
                    held = weakref.ref(obj)
                except TypeError:  # an object without weak references: asked each time
                    return answer
                if len(known) >= _KNOWN_OPS_MAX:
                    known.clear()
                known[id(obj)] = held
            return answer

        return is_op

    # everywhere: the modules that took it by name (weave_client's walk of every value)
    _replace(weave_op, "is_op", make, everywhere=True)


def _wandb_run() -> None:
    from weave.trace import wandb_run_context

    def make(weaves: Any) -> Any:
        def _get_global_wandb_run() -> Any:
            wandb = sys.modules.get("wandb")
            return None if wandb is None else getattr(wandb, "run", None)

        return _get_global_wandb_run

    _replace(wandb_run_context, "_get_global_wandb_run", make)


def _nested_objects() -> None:
    from weave.trace.weave_client import WeaveClient

    def make(weaves: Any) -> Any:
        def _save_nested_objects(self: Any, obj: Any, name: str | None = None) -> Any:
            if plain(obj):
                return None
            return weaves(self, obj, name=name)

        return _save_nested_objects

    _replace(WeaveClient, "_save_nested_objects", make)


def _map_to_refs() -> None:
    from weave.trace import weave_client

    def make(weaves: Any) -> Any:
        def map_to_refs(obj: Any) -> Any:
            try:
                return plain_copy(obj)
            except (NotPlain, RecursionError):  # weave's own answer, or its own error
                return weaves(obj)

        return map_to_refs

    # weave's own map_to_refs calls the module's global for what it holds: plain parts of
    # a mixed value take the fast path too
    _replace(weave_client, "map_to_refs", make)


def redacted_copy(value: Any, keys: set[str]) -> Any:
    """weave's ``redact_sensitive_keys`` of a plain tree: new dicts, lists and tuples, the
    value of a ``str`` key whose lower case is in ``keys`` replaced by ``REDACTED_VALUE``;
    ``NotPlain`` at the first other value or key (a str subclass may have its own lower)."""
    kind = type(value)
    if kind is dict:
        out = {}
        for k, v in value.items():
            key_kind = type(k)
            if key_kind is str:
                out[k] = REDACTED_VALUE if k.lower() in keys else redacted_copy(v, keys)
            elif key_kind in PLAIN_LEAVES:
                out[k] = redacted_copy(v, keys)
            else:
                raise NotPlain
        return out
    if kind is list:
        return [redacted_copy(v, keys) for v in value]
    if kind is tuple:
        return tuple([redacted_copy(v, keys) for v in value])
    if kind in PLAIN_LEAVES:
        return value
    raise NotPlain


REDACTED_VALUE = "REDACTED"  # weave's sanitize.REDACTED_VALUE (checked where applied)


def _redact() -> None:
    from weave.trace import weave_client
    from weave.utils import sanitize

    if getattr(sanitize, "REDACTED_VALUE", None) != REDACTED_VALUE or \
            not isinstance(getattr(sanitize, "_REDACT_KEYS", None), set):
        raise AttributeError("weave.utils.sanitize redacts otherwise")
    should_redact = sanitize.should_redact

    def make(weaves: Any) -> Any:
        def redact_sensitive_keys(obj: Any) -> Any:
            # weave's walk asks its should_redact of every str key: the fast walk reads the
            # same set, while should_redact is weave's own
            if weave_client.should_redact is should_redact:
                try:
                    return redacted_copy(obj, sanitize._REDACT_KEYS)
                except (NotPlain, RecursionError):  # weave's own answer, or its own error
                    pass
            return weaves(obj)

        return redact_sensitive_keys

    _replace(weave_client, "redact_sensitive_keys", make)


def _settings_env() -> None:
    from weave.trace import settings

    if not (isinstance(getattr(settings, "_ENV_KEYS", None), dict)
            and isinstance(getattr(settings, "_FIELD_TYPES", None), dict)
            and callable(getattr(settings, "_parse_env_value", None))):
        raise AttributeError("weave.trace.settings reads its variables otherwise")

    def make(weaves: Any) -> Any:
        # os.environ keeps its variables by encoded name; os.getenv encodes the name, looks it
        # up and decodes the value, through Mapping.get: the look-up alone answers "unset"
        encoded: dict[str, Any] = {}  # variable -> its key in os.environ's own store
        held: list[Any] = [None]  # the os.environ those keys are for

        def _env_or_default(name: str, default: Any) -> Any:
            environ = os.environ
            if type(environ) is not os._Environ:  # a program replaced it: weave's read
                return weaves(name, default)
            try:
                if held[0] is not environ:
                    encoded.clear()
                    held[0] = environ
                variable = settings._ENV_KEYS[name]
                key = encoded.get(variable)
                if key is None:
                    key = encoded[variable] = environ.encodekey(variable)
                raw = environ._data.get(key)
                env = None if raw is None else environ.decodevalue(raw)
            except Exception:  # os.environ (or weave) laid out otherwise: never raised into
                return weaves(name, default)  # the program's op, weave's own read instead
            # weave's own body from here, on the value os.getenv would have returned
            if env:
                return settings._parse_env_value(env, settings._FIELD_TYPES[name])
            return default

        return _env_or_default

    _replace(settings, "_env_or_default", make)


def _call_processor() -> None:
    from weave.trace import weave_client
    from weave.trace_server_bindings.delegating_trace_server import DelegatingTraceServerMixin

    mixin = DelegatingTraceServerMixin.__dict__
    own = (mixin["__getattribute__"], mixin["__getattr__"], mixin["_delegated_server"])

    def make(weaves: Any) -> Any:
        def _get_call_processor(server: Any) -> Any:
            # weave's middleware (its caching one around the engine's server) answers
            # hasattr/getattr of ``call_processor`` through its Python __getattribute__ (a
            # miss, an AttributeError, then the wrapped server's); where nothing of its own
            # has that name, that is its wrapped server's answer, which weave's recursion
            # reaches too: asked of the wrapped server directly
            try:
                inner = _wrapped(server)
            except Exception:  # a layout this look did not foresee: weave's own answer
                inner = None
            if inner is not None:
                return weave_client._get_call_processor(inner)
            return weaves(server)

        def _wrapped(server: Any) -> Any:
            """The server weave's middleware wraps, where its answer is the wrapped one's;
            None elsewhere."""
            kind = type(server)
            if kind.__getattribute__ is own[0] and getattr(kind, "__getattr__", None) is own[1] \
                    and getattr(kind, "_delegated_server", None) is own[2]:
                state = object.__getattribute__(server, "__dict__")
                if "call_processor" not in state and "_next_trace_server" in state and \
                        "call_processor" not in getattr(kind, "optional_delegated_methods", ()) and \
                        not any("call_processor" in k.__dict__ or "_next_trace_server"
                                in k.__dict__ for k in kind.__mro__):
                    return state["_next_trace_server"]
            return None

        return _get_call_processor

    _replace(weave_client, "_get_call_processor", make)


def _ids() -> None:
    from weave.utils import ids

    from engine.wire._codec import uuid7

    def make(weaves: Any) -> Any:
        def generate_id() -> str:
            return uuid7()

        return generate_id

    _replace(ids, "generate_id", make, everywhere=True)


# what each of weave's sends reads from its call (the names of its closure's cells): the op's
# ref (None: the end has none) and the values it serialises
_SENDS = {"create_call": ("send_start_call", "op_def_ref", "inputs_with_refs"),
          "finish_call": ("send_end_call", None, "output_as_refs")}


def _send_code(method: Any, name: str, cells: tuple[str | None, ...]) -> Any:
    """The code of the function ``name`` that weave's ``method`` defines and defers, with
    the closure cells this module reads (AttributeError where this weave has no such)."""
    for const in inspect.unwrap(method).__code__.co_consts:
        if inspect.iscode(const) and const.co_name == name and \
                all(c in const.co_freevars for c in ("self", *cells) if c):
            return const
    raise AttributeError(f"{method.__qualname__} defines no {name} reading {cells}")


def _sends_in_place(engine_server: Callable[[Any], bool]) -> None:
    from weave.trace.concurrent.futures import FutureExecutor
    from weave.trace.weave_client import WeaveClient

    plans = {}  # code of weave's send -> (index of self, of the op's ref or None, of values)
    for method, (name, ref, values) in _SENDS.items():
        code = _send_code(WeaveClient.__dict__[method], name, (ref, values))
        where = code.co_freevars.index
        plans[code] = (where("self"), None if ref is None else where(ref), where(values))
    for attribute in ("_track_future",):
        if not callable(getattr(FutureExecutor, attribute, None)):
            raise AttributeError(f"FutureExecutor has no {attribute}")

    def in_place(executor: Any, f: Any) -> bool:
        """Whether ``f`` is weave's send of one call into the engine's ring that waits for
        nothing: its op's ref already has its digest, its values are plain (no ref to wait
        for), no write-ahead log, the pool its client's own."""
        plan = plans.get(getattr(f, "__code__", None))
        if plan is None or getattr(executor, "_executor", None) is None:
            return False  # not a send, or weave runs it in place itself (no pool)
        in_thread = getattr(executor, "_in_thread_context", None)
        if in_thread is None or in_thread.get():
            return False
        at_self, at_ref, at_values = plan
        cells = f.__closure__
        client = cells[at_self].cell_contents
        if at_ref is not None and \
                not getattr(cells[at_ref].cell_contents, "is_digest_resolved", False):
            return False
        return (getattr(client, "future_executor", None) is executor
                and getattr(client, "_wal", None) is None
                and engine_server(getattr(client, "server", None))
                and plain(cells[at_values].cell_contents))

    def make(weaves: Any) -> Any:
        def defer(self: Any, f: Any, *args: Any, **kwargs: Any) -> Any:
            if not in_place(self, f):
                return weaves(self, f, *args, **kwargs)
            # as weave's pool runs it (in a copy of the caller's context), its result or
            # Exception in the future, then tracked as a submitted one (whose done-callback
            # logs a failure as the pool's does); a KeyboardInterrupt or SystemExit raises
            # here, where the signal landed, with nothing left pending. Not marked as weave's
            # own thread (_make_deadlock_safe): such a send defers nothing, and a signal
            # handler landing in it runs as in the program's thread it is -- the engine's
            # SIGTERM drain and a handler's weave.finish() wait for the pool, where in a
            # thread marked weave's the drain skipped the pool and finish() raised
            future: Future[Any] = Future()
            try:
                result = contextvars.copy_context().run(f, *args, **kwargs)
            except Exception as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
            return self._track_future(future)

        return defer

    _replace(FutureExecutor, "defer", make)
