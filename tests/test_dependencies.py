"""Every package engine imports is one pyproject.toml names, read from the source: a
``pip install engine`` (or ``engine[extra]``) on any supported Python has what the code
imports. Found missing once: ``tomli``, which engine.common._config imports on Python 3.10
(no ``tomllib`` there), came only with pytest, so a plain install on 3.10 failed at import.

Modules outside the optional areas (the integrations, the ClickHouse store) import only the
core dependencies when they load; an extra's package is imported inside a function or under
``try: … except ImportError``, where its absence is a clear message.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

from tests.test_layout import ENGINE_DIR, MODULES, import_statements

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

PYPROJECT = tomllib.loads((ENGINE_DIR.parent / "pyproject.toml").read_text())["project"]
# packages whose modules may import an extra's package when they load
OPTIONAL_AREAS = ("engine.integrations", "engine.server.clickhouse")
_STDLIB = set(sys.stdlib_module_names) | {"__future__", "tomllib"}  # tomllib: 3.11+
_LOCAL = {"engine", "_engine_weave_hook"}


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normalised(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement).group(0))


CORE = {_requirement_name(r) for r in PYPROJECT["dependencies"]}
EXTRAS = {extra: {_requirement_name(r) for r in reqs}
          for extra, reqs in PYPROJECT["optional-dependencies"].items()}
DECLARED = CORE.union(*EXTRAS.values())
def _top_level_names() -> dict[str, set[str]]:
    """Importable top-level name -> the installed distributions that provide it, from each
    distribution's files (``packages_distributions`` on Python 3.10 reads only
    ``top_level.txt``, which most wheels no longer ship)."""
    provided: dict[str, set[str]] = {}
    for dist in importlib.metadata.distributions():
        names = set((dist.read_text("top_level.txt") or "").split())
        for file in dist.files or ():
            first = file.parts[0]
            if first.endswith(".py"):
                names.add(first[:-3])
            elif "." not in first and first != "__pycache__" and len(file.parts) > 1:
                names.add(first)
        for name in names:
            provided.setdefault(name, set()).add(_normalised(dist.metadata["Name"]))
    return provided


_PROVIDERS = _top_level_names()


def _distributions(top_level: str) -> set[str]:
    """The distributions that provide an importable top-level name (the name itself when
    none installed here does: ``tomli`` on Python 3.11+)."""
    return _PROVIDERS.get(top_level) or {_normalised(top_level)}


def _third_party_imports(tree: ast.AST) -> list[tuple[str, int, bool]]:
    """(top-level name, line, runs when the module loads) of every import of a package
    that is neither the standard library nor engine."""
    found: list[tuple[str, int, bool]] = []
    for node, at_load in import_statements(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            continue  # relative: engine's own
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
        found += [(name.split(".")[0], node.lineno, at_load) for name in names
                  if name.split(".")[0] not in _STDLIB | _LOCAL]
    return found


def _imports() -> list[tuple[str, Path, str, int, bool]]:
    """(module, file, top-level name, line, at load) for every third-party import of engine."""
    rows = []
    for module, path in sorted(MODULES.items()):
        for name, line, at_load in _third_party_imports(ast.parse(path.read_text(), str(path))):
            rows.append((module, path.relative_to(ENGINE_DIR.parent), name, line, at_load))
    return rows


IMPORTS = _imports()


def test_the_walk_sees_what_runs_when_a_module_loads():
    tree = ast.parse(
        "import aiohttp\n"
        "if sys.version_info < (3, 11):\n    import tomli\n"
        "try:\n    import lz4\nexcept ImportError:\n    lz4 = None\n"
        "if TYPE_CHECKING:\n    import ray\n"
        "def f():\n    import numpy\n"
        "class C:\n    import yarl\n")
    assert sorted(_third_party_imports(tree)) == [
        ("aiohttp", 1, True), ("lz4", 5, False), ("numpy", 11, False), ("tomli", 3, True),
        ("yarl", 13, True)]
    names = {name for _, _, name, _, _ in IMPORTS}
    assert {"msgspec", "aiohttp", "zstandard", "uvloop", "tomli", "clickhouse_connect"} <= names


def test_every_package_engine_imports_is_declared():
    missing = [f"{path}:{line} imports {name} ({', '.join(sorted(_distributions(name)))}): "
               "name it in pyproject.toml's dependencies or an extra"
               for _, path, name, line, _ in IMPORTS if not _distributions(name) & DECLARED]
    assert not missing, "\n".join(missing)


def test_what_loads_outside_the_optional_areas_is_a_core_dependency():
    breaches = [f"{path}:{line} imports {name} when it loads, but it is not a core dependency: "
                "import it inside the function that needs it, or declare it in dependencies"
                for module, path, name, line, at_load in IMPORTS
                if at_load and not module.startswith(OPTIONAL_AREAS)
                and not _distributions(name) & CORE]
    assert not breaches, "\n".join(breaches)
