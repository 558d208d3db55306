"""``engine backup``: a consistent copy of an ``engine serve`` SQLite store, while it runs.

Copying the database file of a running server with ``cp`` gives a torn copy (the file and
its WAL change underneath) and leaves out what is still in the WAL. This command copies
the store through SQLite's online backup in one step: one read transaction, so the copy is
the store exactly as it was at one instant, WAL included, and the server keeps writing
meanwhile (in WAL mode a reader blocks no writer; the server's WAL only grows until the
copy is done, as its checkpoints cannot pass a reader). The copy is written beside its
destination under a temporary name, owner-only (0600), switched to a single self-contained
file (no ``-wal`` beside it), checked (``PRAGMA quick_check``), fsynced, then renamed into
place: a destination that exists afterwards is always a whole, checked store. Restoring is
pointing ``engine serve --db`` at the copy. ``--compact`` copies with ``VACUUM INTO``
instead (also one read transaction): the copy leaves out the free pages deleted calls left
(SQLite reuses them but never gives them back), which is how a running store is shrunk.

ClickHouse stores have ClickHouse's own ``BACKUP``; any store can be copied to another
server with ``engine copy``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import time
from pathlib import Path

from engine.cli import _args
from engine.cli._args import CommandFailed, UsageError
from engine.common._files import fsync_dir


def add(subparsers: argparse._SubParsersAction) -> None:
    from engine.server import default_db_path

    backup = _args.add_command(
        subparsers, "backup", "consistent copy of an engine serve SQLite store, while it runs",
        "Copies the SQLite store of engine serve (running or not) to FILE as it was at one "
        "instant: SQLite's online backup in one read transaction, the copy checked, owner-"
        "only, renamed into place once whole.")
    backup.add_argument("--db", default=None, help=f"the store (default {default_db_path()})")
    backup.add_argument("--to", required=True, metavar="FILE", help="where the copy goes")
    backup.add_argument("--force", action="store_true", help="replace FILE if it exists")
    backup.add_argument("--no-check", action="store_true",
                        help="skip PRAGMA quick_check of the copy (it reads the whole copy)")
    backup.add_argument("--compact", action="store_true",
                        help="a compacted copy (VACUUM INTO: without the free pages deleted "
                             "calls left; slower): the way to shrink a store that runs")
    backup.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.server import default_db_path

    if args.db is not None and "://" in args.db:  # a --store URL, not a file
        raise UsageError(
            f"backup: --db {args.db} is a server's store, not an engine serve SQLite file; "
            "back a ClickHouse store up with ClickHouse's own BACKUP, or copy its projects "
            "into a SQLite store with engine copy (docs/serve.md)")
    source = Path(args.db) if args.db else default_db_path()
    target = Path(args.to)
    _check_paths(source, target, args.force)
    began = time.monotonic()
    calls, size = backup(source, target, check=not args.no_check, compact=args.compact)
    print(f"engine backup: {source} ({source.stat().st_size / 1e6:,.1f} MB) -> {target}: "
          f"{calls:,} calls, {size / 1e6:,.1f} MB{', compacted' if args.compact else ''}, "
          f"{'checked' if not args.no_check else 'not checked'}, in "
          f"{time.monotonic() - began:.1f} s", flush=True)
    return 0


def _check_paths(source: Path, target: Path, force: bool) -> None:
    if source.is_dir():
        raise UsageError(f"backup: --db {source} is a directory; give the store's file path")
    if not source.is_file():
        raise UsageError(f"backup: --db {source}: no such file (engine serve's store: "
                         "give its --db path)")
    if target.is_dir():
        raise UsageError(f"backup: --to {target} is a directory; give the copy's file name")
    if not target.parent.is_dir():
        raise UsageError(f"backup: --to {target}: no such directory {target.parent}")
    if target.exists() and not force:
        raise CommandFailed(f"backup: {target} exists; --force replaces it")
    with contextlib.suppress(OSError):
        if target.exists() and os.path.samefile(source, target):
            raise UsageError("backup: --db and --to are the same file")


def backup(source: Path, target: Path, *, check: bool = True,
           compact: bool = False) -> tuple[int, int]:
    """Copy the store at ``source`` to ``target``; (calls in the copy, its size in bytes).
    ``compact``: ``VACUUM INTO`` instead of the backup API (one read transaction as well; the
    copy holds no free pages)."""
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    fd = os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    try:
        _copy(source, partial, compact)
        calls = _finish(source, partial, check)
        with open(partial, "rb") as copy:
            os.fsync(copy.fileno())
        os.replace(partial, target)
        fsync_dir(target.parent)
        return calls, target.stat().st_size
    except BaseException:
        for leftover in (partial, Path(f"{partial}-journal"), Path(f"{partial}-wal"),
                         Path(f"{partial}-shm")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        raise


def _copy(source: Path, partial: Path, compact: bool) -> None:
    try:
        src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise CommandFailed(f"backup: cannot open {source}: {exc}") from None
    try:
        src.execute("PRAGMA busy_timeout=30000")
        try:
            tables = _tables(src)
        except sqlite3.DatabaseError as exc:
            raise CommandFailed(f"backup: {source} is not a SQLite database ({exc})") from None
        if not tables >= STORE_TABLES:
            raise CommandFailed(f"backup: {source} is a SQLite database but not an engine serve "
                                "store (it has no calls and schema_versions tables)")
        try:
            if compact:  # the empty placeholder file is allowed as VACUUM INTO's target
                src.execute("VACUUM INTO ?", (str(partial),))
            else:
                dst = sqlite3.connect(partial)
                try:
                    src.backup(dst)  # every page in one step: one read transaction, one instant
                finally:
                    dst.close()
        except sqlite3.Error as exc:
            raise CommandFailed(f"backup: copying {source} failed: {exc}") from None
    finally:
        src.close()


STORE_TABLES = frozenset({"calls", "schema_versions"})  # what every engine serve store has


def _tables(db: sqlite3.Connection) -> set[str]:
    return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def foreign_tables(path: Path) -> list[str]:
    """The tables of the SQLite file at ``path`` if it holds some but is no engine serve
    store (someone else's database), else [] (a store, an empty or new file, or not SQLite:
    the server's own open says so)."""
    if not path.is_file() or path.stat().st_size == 0:
        return []
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            tables = _tables(db)
        finally:
            db.close()
    except sqlite3.Error:
        return []
    return [] if not tables or tables >= STORE_TABLES else sorted(tables)


def _finish(source: Path, partial: Path, check: bool) -> int:
    """The copy as one self-contained file, checked; the number of calls it holds. The
    backup copies pages as they are: a damaged store gives a damaged copy, refused here."""
    dst = sqlite3.connect(partial)
    try:
        dst.execute("PRAGMA journal_mode=DELETE")  # no -wal beside the copy
        if check:
            problems = [row[0] for row in dst.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise CommandFailed(f"backup: the copy failed its check: {'; '.join(problems[:5])}")
        return dst.execute("SELECT count(*) FROM calls").fetchone()[0]
    except sqlite3.Error as exc:
        raise CommandFailed(f"backup: the copy of {source} is unreadable (SQLite: {exc}): the "
                            f"store is damaged; `sqlite3 {source} 'PRAGMA integrity_check'` "
                            "says where") from None
    finally:
        dst.close()

