"""``engine serve``: a local Weave-compatible trace server in its own process (aiohttp on
uvloop, SQLite in WAL). In-process: ``runner, url = await start_server(port=0, db_path=...)``
… ``await runner.cleanup()``; as a child process: ``with serve_subprocess(db_path) as url:``.
May import: ``common``, ``native``, ``wire``.
"""

from engine.server._app import build_app, default_db_path, run_server, start_server
from engine.server._body import ACCEPTED_ENCODINGS, DEFAULT_MAX_BODY_BYTES
from engine.server._subprocess import serve_subprocess, spawn_server, stop_server

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
