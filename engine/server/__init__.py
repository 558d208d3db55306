"""``engine serve``: a local Weave-compatible trace server in its own process (aiohttp on
uvloop, SQLite in WAL). In-process: ``runner, url = await start_server(port=0, db_path=...)``
… ``await runner.cleanup()``; as a child process: ``with serve_subprocess(db_path) as url:``.
May import: ``common``, ``native``, ``wire``.
"""

from typing import TYPE_CHECKING

from engine.common._lazy import lazy_attributes

if TYPE_CHECKING:
    from engine.server._app import build_app, run_server, start_server
    from engine.server._body import ACCEPTED_ENCODINGS, DEFAULT_MAX_BODY_BYTES
    from engine.server._sqlite_db import default_db_path
    from engine.server._subprocess import serve_subprocess, spawn_server, stop_server

# Imported on first use: the app and the request bodies pull in aiohttp's server and every
# route (~0.2 s of CPU), which a process that only needs the ingest models (an ingest
# worker) or only starts a server subprocess must not pay for.
__getattr__, __dir__ = lazy_attributes(__name__, globals(), {
    "build_app": "engine.server._app", "run_server": "engine.server._app",
    "start_server": "engine.server._app", "default_db_path": "engine.server._sqlite_db",
    "ACCEPTED_ENCODINGS": "engine.server._body", "DEFAULT_MAX_BODY_BYTES": "engine.server._body",
    "serve_subprocess": "engine.server._subprocess", "spawn_server": "engine.server._subprocess",
    "stop_server": "engine.server._subprocess",
})


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
