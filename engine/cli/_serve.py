"""``engine serve``: the local trace server (aiohttp + SQLite), in the foreground."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sqlite3
from pathlib import Path

from engine.cli import _args
from engine.cli._args import CommandFailed, UsageError
from engine.common import _env


def add(subparsers: argparse._SubParsersAction) -> None:
    from engine.server import DEFAULT_MAX_BODY_BYTES, default_db_path
    from engine.server._limits import DEFAULT_SHUTDOWN_TIMEOUT_S
    from engine.server._op_watch import GRACE_S
    from engine.server._retention import DEFAULT_INTERVAL_S

    serve = _args.add_command(subparsers, "serve", "run the local trace server",
                              "Run the local trace server; its trace browser is at its URL.")
    serve.add_argument("--db", default=None, help=f"SQLite file (default {default_db_path()})")
    serve.add_argument("--host", type=_args.host, default="127.0.0.1",
                       help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=_args.port, default=6345,
                       help="port to bind (default 6345); 0 picks a free one")
    serve.add_argument(
        "--store", default="sqlite",
        help="sqlite (one file, the default); clickhouse://USER@HOST:PORT/DB (a ClickHouse "
        "server, shared by replicas; password from $ENGINE_CLICKHOUSE_PASSWORD or "
        "--clickhouse-password-file); chdb:///FOLDER (ClickHouse embedded in this process); "
        "count only decodes and counts calls (benchmarks)",
    )  # fmt: skip
    serve.add_argument(
        "--clickhouse-password-file", default=None,
        help="file holding the ClickHouse password (else $ENGINE_CLICKHOUSE_PASSWORD_FILE, "
        "$ENGINE_CLICKHOUSE_PASSWORD)",
    )  # fmt: skip
    serve.add_argument(
        "--max-body-bytes", type=_args.positive_int, default=DEFAULT_MAX_BODY_BYTES,
        help="largest request body accepted, before and after decompression (default "
        f"{DEFAULT_MAX_BODY_BYTES // 2**20} MiB)",
    )  # fmt: skip
    serve.add_argument(
        "--retention-days", type=_args.positive_int, default=None,
        help="delete calls this many days after they start, in every project without its "
        "own retention (weave's project TTL settings); default: keep them until deleted",
    )  # fmt: skip
    serve.add_argument(
        "--retention-interval-s", type=_args.positive_float, default=DEFAULT_INTERVAL_S,
        help=f"how often calls past their retention are deleted (default {DEFAULT_INTERVAL_S:.0f})",
    )  # fmt: skip
    serve.add_argument(
        "--missing-op-grace-s", type=_args.positive_float, default=GRACE_S,
        help="how long after a call first names a weave op the server looks it up, and "
        f"counts and logs it if it is missing (default {GRACE_S:.0f}; weave saves an op "
        "within milliseconds of its first call)",
    )  # fmt: skip
    serve.add_argument(
        "--shutdown-timeout-s", type=_args.positive_float, default=DEFAULT_SHUTDOWN_TIMEOUT_S,
        help="on SIGTERM or SIGINT, how long the requests in progress may take to finish "
        f"before they are cancelled (default {DEFAULT_SHUTDOWN_TIMEOUT_S:.0f}); requests that "
        "begin meanwhile are answered 503 to send again",
    )  # fmt: skip
    serve.add_argument(
        "--parent-pid", type=_args.pid, default=None, metavar="PID",
        help="stop once process PID, this server's parent, exits (however it ends): for a "
        "program that runs the server as its child (engine demo does)",
    )  # fmt: skip
    serve.add_argument(
        "--root-path", type=_root_path, default=None,
        metavar="PATH",
        help="behind a reverse proxy at a path prefix (https://tools.example/engine/ -> this "
        "server): that prefix, e.g. /engine; the trace browser builds every URL under it, and "
        "requests are served with it or without it (a proxy that strips it or not; default "
        f"${_env.ROOT_PATH}, else none; docs/serve.md, \"Behind a reverse proxy\")",
    )  # fmt: skip
    _args.add_max_connections_flag(serve, "server")
    _args.add_tls_flags(serve)
    _args.add_key_flags(serve, "set $ENGINE_API_KEY for one key that may read and write every "
                        "project")
    serve.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.server import default_db_path, run_server
    from engine.server._auth import load_key_ring

    if args.db is not None and args.store != "sqlite":
        raise UsageError(f"serve: --db is the SQLite store's file, and --store {args.store} "
                         "keeps nothing there: drop --db, or --store")
    if args.db is not None and os.path.isdir(args.db):
        raise UsageError(f"serve: --db {args.db} is a directory; give the database file's path")
    db_path = Path(args.db) if args.db else default_db_path()
    new_db = args.store == "sqlite" and not db_path.exists()
    if args.store == "sqlite":
        _refuse_foreign(db_path)
    try:
        run_server(host=args.host, port=args.port, db_path=args.db, store=args.store,
                   clickhouse_password_file=args.clickhouse_password_file,
                   max_body_bytes=args.max_body_bytes, max_connections=args.max_connections,
                   keys=load_key_ring(args.keys_file), retention_days=args.retention_days,
                   retention_interval_s=args.retention_interval_s,
                   missing_op_grace_s=args.missing_op_grace_s, parent_pid=args.parent_pid,
                   shutdown_timeout_s=args.shutdown_timeout_s, tls_cert=args.tls_cert,
                   tls_key=args.tls_key, root_path=_chosen_root_path(args))
    except sqlite3.Error as exc:
        raise CommandFailed(f"serve: cannot use the database {args.db or 'at the default path'}: "
                            f"{exc} (is it an SQLite file written by engine serve?)") from exc
    except BrokenPipeError:
        raise  # its stdout's reader is gone (a parent that died): ends quietly, not "cannot listen"
    except OSError as exc:
        if new_db:  # it made the file, then could not listen: leave nothing behind
            _remove_store(db_path)
        raise CommandFailed(_listen_error(args.host, args.port, exc)) from exc
    return 0


def _root_path(text: str) -> str:
    from engine.server._root_path import normalise

    try:
        return normalise(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _chosen_root_path(args: argparse.Namespace) -> str:
    """``--root-path``, else ``$ENGINE_ROOT_PATH`` (a bad one named as such: exit 2)."""
    if args.root_path is not None:
        return args.root_path
    try:
        return _root_path(os.environ.get(_env.ROOT_PATH, ""))
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"serve: ${_env.ROOT_PATH}: {exc}") from None


def _refuse_foreign(db_path: Path) -> None:
    from engine.cli._backup import foreign_tables

    tables = foreign_tables(db_path)
    if tables:
        raise CommandFailed(
            f"serve: {db_path} is a SQLite database of something else (tables: "
            f"{', '.join(tables[:5])}), not an engine serve store; engine serve keeps its own "
            "tables: give --db a new file's path")


def _remove_store(db_path: Path) -> None:
    for path in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _listen_error(host: str, port: int, exc: OSError) -> str:
    if exc.filename:
        return f"serve: {exc.filename}: {exc.strerror}"
    where = f"cannot listen on {host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (f"serve: {where}: the address is already in use (another engine serve? stop "
                "it, or pick another --port; 0 picks a free one)")
    if exc.errno in (errno.EADDRNOTAVAIL, errno.EACCES):
        return f"serve: {where}: {os.strerror(exc.errno)} (check --host and --port)"
    return f"serve: {where}: {exc.strerror or exc} (check --host and --port)"
