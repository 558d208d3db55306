"""Per-call costs of weave 0.54.0's ``@weave.op`` that :func:`install` removes without
changing what weave computes (measured on Python 3.11: ~1,100 → ~340 µs of CPU per traced
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
  the leaves shared. One look at the types (:func:`plain`, bounded) answers that: then
  nothing to save, and the copy is made by :func:`plain_copy`; anything else (a dict
  subclass, a pydantic model, a dataset row's ref, a cycle, more than ``PLAIN_MAX_VALUES``
  values) goes to weave's own.

- **call ids**: weave makes each call's id (UUIDv7) from ``os.urandom`` and a hex string
  built byte by byte (~4 µs, two per call); the engine's own UUIDv7 (the same format:
  millisecond time first, version 7, RFC variant; unique per process and after a fork,
  not secret, as ids need not be) takes ~0.05 µs with the C accelerator, 0.4 without.

Each is applied only where weave has the function it replaces, named as in 0.54.0; a weave
that lacks one keeps its own (logged at debug). ``install(weave_speedups=False)`` or
``ENGINE_WEAVE_SPEEDUPS=0`` keeps weave's own for all of them.
"""

from __future__ import annotations

import logging
import sys
import weakref
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


def plain_copy(value: Any) -> Any:
    """weave's ``map_to_refs`` of a :func:`plain` tree: new dicts and lists (tuples become
    lists), the leaves as they are."""
    kind = type(value)
    if kind is dict:
        return {k: plain_copy(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [plain_copy(v) for v in value]
    return value


def apply() -> None:
    """Replace what can be replaced (what cannot is logged at debug; another weave's
    layout never fails the install)."""
    for speedup in (_is_op, _wandb_run, _nested_objects, _map_to_refs, _ids):
        try:
            speedup()
        except (ImportError, AttributeError) as exc:
            log.debug("weave speed-up %s left out: %s", speedup.__name__, exc)


def _is_op() -> None:
    from weave.trace import op as weave_op

    weaves = getattr(weave_op, "is_op", None)
    if not callable(weaves) or getattr(weaves, "__name__", "") != "is_op":
        log.debug("weave has no weave.trace.op.is_op: left as it is")
        return

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

    is_op.__doc__ = weaves.__doc__
    is_op.__wrapped__ = weaves  # type: ignore[attr-defined]
    # the modules that took it by name (weave_client's walk of every value among them)
    for name, module in list(sys.modules.items()):
        if (name == "weave" or name.startswith("weave.")) and getattr(module, "is_op", None) is weaves:
            module.is_op = is_op  # type: ignore[attr-defined]


def _wandb_run() -> None:
    from weave.trace import wandb_run_context

    weaves = getattr(wandb_run_context, "_get_global_wandb_run", None)
    if not callable(weaves):
        log.debug("weave has no wandb_run_context._get_global_wandb_run: left as it is")
        return

    def _get_global_wandb_run() -> Any:
        wandb = sys.modules.get("wandb")
        return None if wandb is None else getattr(wandb, "run", None)

    _get_global_wandb_run.__doc__ = weaves.__doc__
    _get_global_wandb_run.__wrapped__ = weaves  # type: ignore[attr-defined]
    wandb_run_context._get_global_wandb_run = _get_global_wandb_run  # type: ignore[attr-defined]


def _nested_objects() -> None:
    from weave.trace.weave_client import WeaveClient

    weaves = WeaveClient.__dict__.get("_save_nested_objects")
    if not callable(weaves):
        log.debug("weave has no WeaveClient._save_nested_objects: left as it is")
        return

    def _save_nested_objects(self: Any, obj: Any, name: str | None = None) -> Any:
        if plain(obj):
            return None
        return weaves(self, obj, name=name)

    _save_nested_objects.__doc__ = weaves.__doc__
    _save_nested_objects.__wrapped__ = weaves  # type: ignore[attr-defined]
    WeaveClient._save_nested_objects = _save_nested_objects  # type: ignore[method-assign]


def _map_to_refs() -> None:
    from weave.trace import weave_client

    weaves = getattr(weave_client, "map_to_refs", None)
    if not callable(weaves) or getattr(weaves, "__name__", "") != "map_to_refs":
        log.debug("weave has no weave_client.map_to_refs: left as it is")
        return

    def map_to_refs(obj: Any) -> Any:
        return plain_copy(obj) if plain(obj) else weaves(obj)

    map_to_refs.__doc__ = weaves.__doc__
    map_to_refs.__wrapped__ = weaves  # type: ignore[attr-defined]
    # weave's own map_to_refs calls the module's global for what it holds: plain parts of
    # a mixed value take the fast path too
    weave_client.map_to_refs = map_to_refs  # type: ignore[attr-defined]


def _ids() -> None:
    from weave.utils import ids

    from engine.wire._codec import uuid7

    weaves = getattr(ids, "generate_id", None)
    if not callable(weaves) or getattr(weaves, "__name__", "") != "generate_id":
        log.debug("weave has no weave.utils.ids.generate_id: left as it is")
        return

    def generate_id() -> str:
        return uuid7()

    generate_id.__doc__ = weaves.__doc__
    generate_id.__wrapped__ = weaves  # type: ignore[attr-defined]
    for name, module in list(sys.modules.items()):
        if (name == "weave" or name.startswith("weave.")) and \
                getattr(module, "generate_id", None) is weaves:
            module.generate_id = generate_id  # type: ignore[attr-defined]
