"""``engine serve``: a local Weave-compatible trace server in its own process (aiohttp on
uvloop, SQLite in WAL). In-process: ``runner, url = await start_server(port=0, db_path=...)``
… ``await runner.cleanup()``; as a child process: ``with serve_subprocess(db_path) as url:``.
May import: ``common``, ``native``, ``wire``.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.server._app import build_app, run_server, start_server
    from engine.server._body import ACCEPTED_ENCODINGS, DEFAULT_MAX_BODY_BYTES
    from engine.server._sqlite_db import default_db_path
    from engine.server._subprocess import serve_subprocess, spawn_server, stop_server

# Imported on first use: the app and the request bodies pull in aiohttp's server and every
# route (~0.2 s of CPU), which a process that only needs the ingest models (an ingest
# worker) or only starts a server subprocess must not pay for.
_HOMES = {
    "build_app": "_app", "default_db_path": "_sqlite_db", "run_server": "_app", "start_server": "_app",
    "ACCEPTED_ENCODINGS": "_body", "DEFAULT_MAX_BODY_BYTES": "_body",
    "serve_subprocess": "_subprocess", "spawn_server": "_subprocess", "stop_server": "_subprocess",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'engine.server' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"engine.server.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


__all__ = [
    "ACCEPTED_ENCODINGS",
    "DEFAULT_MAX_BODY_BYTES",
    "build_app",
    "default_db_path",
    "run_server",
    "serve_subprocess",
    "spawn_server",
    "start_server",
    "stop_server",
]
