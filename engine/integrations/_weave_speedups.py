"""Two per-call costs of weave 0.54.0's ``@weave.op`` that :func:`install` removes without
changing what weave computes (measured on Python 3.11: ~1,200 → ~400 µs of CPU per traced
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

Each is applied only where weave has the function it replaces, named as in 0.54.0; a weave
that lacks one keeps its own (logged at debug). ``install(weave_speedups=False)`` or
``ENGINE_WEAVE_SPEEDUPS=0`` keeps weave's own for both.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

log = logging.getLogger("engine.integrations.weave")

NEVER_OPS = frozenset((str, int, float, bool, type(None), dict, list, tuple))


def apply() -> None:
    """Replace what can be replaced (what cannot is logged at debug; another weave's
    layout never fails the install)."""
    for speedup in (_is_op, _wandb_run):
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

    def is_op(obj: Any, _weaves: Any = weaves, _never: frozenset[type] = NEVER_OPS) -> bool:
        return False if type(obj) in _never else _weaves(obj)

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
