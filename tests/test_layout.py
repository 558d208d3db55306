"""The house's rules, read from the source: no import cycle among engine's modules, and each
package imports only what its ``__init__`` docstring allows (its ``May import:`` line).

Imports inside functions count (they are a way to hide a cycle or a layering breach, not to
remove it); only imports under ``if TYPE_CHECKING:`` do not, as they never run.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import engine

ENGINE_DIR = Path(engine.__file__).parent


def _module_paths() -> dict[str, Path]:
    """Dotted name -> file of every module of engine (a package is its __init__)."""
    modules = {}
    for path in ENGINE_DIR.rglob("*.py"):
        parts = list(path.relative_to(ENGINE_DIR.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = _module_paths()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _catches_import_error(node: ast.Try) -> bool:
    names = set()
    for handler in node.handlers:
        kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        names |= {k.id for k in kinds if isinstance(k, ast.Name)}
    return bool(names & {"ImportError", "ModuleNotFoundError"})


def import_statements(tree: ast.AST) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement that can run (not under ``if TYPE_CHECKING:``), and whether it
    runs when the module loads (not inside a function, nor in the body of a ``try`` that
    catches ImportError)."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []
    pending: list[tuple[ast.AST, bool]] = [(n, True) for n in ast.iter_child_nodes(tree)]
    while pending:
        node, at_load = pending.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            pending += [(n, at_load) for n in node.orelse]
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append((node, at_load))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            at_load = False
        if isinstance(node, ast.Try) and _catches_import_error(node):
            pending += [(n, False) for n in node.body]
            pending += [(n, at_load) for part in (node.handlers, node.orelse, node.finalbody)
                        for n in part]
            continue
        pending += [(n, at_load) for n in ast.iter_child_nodes(node)]
    return found


def _imported_names(module: str, tree: ast.AST) -> list[tuple[str, int]]:
    """(imported module, line) of every import that can run, relative ones resolved."""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node, _ in import_statements(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
            continue
        base = node.module or ""
        if node.level:
            parts = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(parts + ([node.module] if node.module else []))
        for alias in node.names:  # ``from pkg import submodule`` imports the submodule
            full = f"{base}.{alias.name}"
            found.append((full if full in MODULES else base, node.lineno))
    return found


def _owning_module(name: str) -> str | None:
    """The engine module an imported name belongs to (``engine.x._y.Z`` -> ``engine.x._y``)."""
    while name not in MODULES:
        if "." not in name:
            return None
        name = name.rpartition(".")[0]
    return name


def _import_graph() -> dict[str, dict[str, int]]:
    """module -> {engine module it imports: line of the first such import}."""
    graph: dict[str, dict[str, int]] = {}
    for module, path in MODULES.items():
        edges: dict[str, int] = {}
        for name, line in _imported_names(module, ast.parse(path.read_text(), str(path))):
            target = _owning_module(name) if name.split(".")[0] == "engine" else None
            if target is not None and target != module:
                edges.setdefault(target, line)
        graph[module] = edges
    return graph


GRAPH = _import_graph()


def _find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import cycle as a path that starts and ends with the same module, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def _package_of(module: str) -> str | None:
    """The top-level package of engine a module lives in; None for the root's own modules."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (ENGINE_DIR / parts[1]).is_dir() else None


PACKAGES = sorted(p.name for p in ENGINE_DIR.iterdir() if (p / "__init__.py").is_file())


def _allowed_imports(package: str) -> set[str]:
    """The packages ``package``'s docstring allows it to import ("May import: ...")."""
    doc = ast.get_docstring(ast.parse((ENGINE_DIR / package / "__init__.py").read_text())) or ""
    rule = re.search(r"May import: (.+?)\.(?:\s|$)", " ".join(doc.split()))
    assert rule, f"engine/{package}/__init__.py's docstring has no 'May import: ...' line"
    if rule.group(1) == "every package":
        return set(PACKAGES)
    if rule.group(1) == "nothing else of engine":
        return set()
    allowed = set(re.findall(r"``(\w+)``", rule.group(1)))
    assert allowed <= set(PACKAGES), f"engine/{package}: unknown {allowed - set(PACKAGES)}"
    return allowed


def test_the_graph_sees_the_imports_that_run():
    """The parser finds what it must: function-level imports, package re-exports; and skips
    what never runs (TYPE_CHECKING)."""
    assert "engine.producer._flush" in GRAPH["engine.producer._tracer"]
    assert "engine.ring" in GRAPH["engine.producer._slot"]  # ``from engine import ring``
    assert "engine.sender._spool" in GRAPH["engine.sender._process"]  # inside a function
    assert "engine.producer._tracer" not in GRAPH["engine.producer._handle"]  # TYPE_CHECKING
    assert _find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b": 1}, "b": {}}) is None


def test_no_module_of_engine_imports_itself_back():
    cycle = _find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_each_package_imports_only_what_its_docstring_allows():
    breaches = []
    for module, edges in sorted(GRAPH.items()):
        package = _package_of(module)
        if package is None:
            continue
        allowed = _allowed_imports(package) | {package}
        for target, line in sorted(edges.items()):
            target_package = _package_of(target)
            if target_package is not None and target_package not in allowed:
                breaches.append(f"{MODULES[module].relative_to(ENGINE_DIR.parent)}:{line} "
                                f"imports {target} ({package} may import {sorted(allowed)})")
            elif target_package is None and target != "engine.__main__":
                breaches.append(f"{module} imports the root package {target}: import the "
                                "package that defines the name instead")
    assert not breaches, "\n".join(breaches)


def test_every_package_states_its_rules():
    assert PACKAGES == ["cli", "client", "common", "integrations", "native", "producer", "relay",
                        "ring", "sender", "server", "wire"]
    for package in PACKAGES:
        _allowed_imports(package)  # raises if the line is missing or names no package
    assert _allowed_imports("common") == set()
    assert {"producer", "server"}.isdisjoint(_allowed_imports("sender"))
    assert {"producer", "sender"}.isdisjoint(_allowed_imports("server"))
    assert {"sender", "server", "relay", "cli"}.isdisjoint(_allowed_imports("producer"))
    assert _allowed_imports("ring") <= {"common", "native", "wire"}


def _modules_after(code: str) -> set[str]:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
                          capture_output=True, text=True, timeout=60, check=True)
    return set(done.stdout.split())


def test_a_producing_process_starts_without_the_http_stacks():
    # every eval worker imports engine; aiohttp's client and the server's routes cost it
    # ~0.3 s of CPU at start-up (per process of a spawn pool, per Ray worker)
    loaded = _modules_after("import engine\nengine.Engine, engine.Tracer, engine.current_call")
    assert "aiohttp" not in loaded
    assert not any(m.startswith(("engine.client", "engine.server")) for m in loaded)


def test_an_ingest_worker_and_the_command_line_start_without_aiohttp():
    loaded = _modules_after("import engine.cli._ingest\nfrom engine.cli import build_parser\n"
                            "build_parser()")
    assert "aiohttp" not in loaded
    assert "engine.server._app" not in loaded


def test_an_ingest_worker_starts_without_the_network_modules():
    # a worker reads lines and writes rings: URL parsing, urllib and asyncio are its
    # command's (they were ~40% of a worker's start-up CPU, which a 100k-line ingest pays)
    loaded = _modules_after("import engine.cli._ingest, engine.producer._tracer")
    assert {"asyncio", "yarl", "urllib.request", "http.client", "aiohttp"}.isdisjoint(loaded)


def test_the_lazy_names_still_resolve():
    loaded = _modules_after("import engine, engine.server\nengine.RemoteHTTPTraceServer\n"
                            "engine.server.start_server")
    assert {"aiohttp", "engine.client", "engine.server._app"} <= loaded
    from engine.server import default_db_path, start_server  # noqa: F401
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        engine.nope  # noqa: B018
    from engine import server

    assert set(engine.__all__) <= set(dir(engine))
    assert set(server.__all__) <= set(dir(server))
