"""``ENGINE_WEAVE=1``: route an unmodified weave program through the engine.

``engine-weave.pth`` (installed into site-packages with the package) imports this module
at interpreter start when ``ENGINE_WEAVE`` is set. It imports neither engine nor weave: it
runs in every Python process that inherits the variable (the engine's own sender and
server processes too), and only a process that imports weave pays for the integration,
which :func:`engine.integrations.weave.install` sets up right after ``weave`` is imported
(before the program can call ``weave.init``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

ENABLE_ENV = "ENGINE_WEAVE"
_ENABLED_VALUES = ("1", "true", "yes", "on")


def enabled() -> bool:
    return os.environ.get(ENABLE_ENV, "").strip().lower() in _ENABLED_VALUES


class InstallAfterWeaveImport:
    """A meta path finder that only watches for ``weave``: it finds the real module through
    the finders after it, and makes its loader call ``install()`` once weave's package ran."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != "weave":
            return None
        sys.meta_path.remove(self)  # once: every later import of weave is weave's own
        spec = _spec_from_other_finders(fullname, path, target)
        if spec is not None and spec.loader is not None:
            _install_after_exec(spec.loader)
        return spec


def _spec_from_other_finders(
    fullname: str, path: Sequence[str] | None, target: ModuleType | None
) -> ModuleSpec | None:
    for finder in sys.meta_path:
        find_spec = getattr(finder, "find_spec", None)
        spec = find_spec(fullname, path, target) if find_spec is not None else None
        if spec is not None:
            return spec
    return None


def _install_after_exec(loader: object) -> None:
    exec_module = loader.exec_module  # type: ignore[attr-defined]

    def exec_then_install(module: ModuleType) -> None:
        exec_module(module)
        del loader.exec_module  # type: ignore[attr-defined]  # the loader's own again
        try:
            from engine.integrations.weave import install

            install()
        except Exception as exc:  # never into the program's `import weave`: weave as it is
            import logging

            logging.getLogger("engine.integrations.weave").warning(
                "ENGINE_WEAVE is set but the engine's weave integration could not be "
                "installed (%s: %s); weave sends its traces itself", type(exc).__name__, exc)

    loader.exec_module = exec_then_install  # type: ignore[attr-defined]


if enabled() and "weave" not in sys.modules:
    sys.meta_path.insert(0, InstallAfterWeaveImport())
