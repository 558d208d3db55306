"""The optional C accelerator, or None: ``ENGINE_PURE_PYTHON=1`` or a missing build.

``engine.native._native`` is built at install time when a C compiler is there (setup.py marks it
optional). Without it the ring and id code run in pure Python: same bytes, slower. Which
one is in use is visible as ``engine.native._accel.native is not None`` and in ``eng.stats()``.
"""

from __future__ import annotations

import os
from types import ModuleType


def _load() -> ModuleType | None:
    if os.environ.get("ENGINE_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from engine.native import _native
    except ImportError:
        return None
    return _native


native = _load()
