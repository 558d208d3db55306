"""The SQLite database file of ``engine serve``: creation, connections, schema, transactions.

One writer thread with its connection runs every write; ``READERS`` reader threads, each
with a connection of its own, run the reads side by side. WAL mode lets long reads run
beside call ingest and beside each other, and no statement ever runs on the event loop.

The schema is versioned per component in ``schema_versions``: ``calls`` (the call table)
and ``more`` (objects, tables, files, feedback, costs). A migration script at index ``i``
takes a component from version ``i`` to ``i + 1``; files written by older servers are
brought up to date on open.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from engine.common._files import make_private_dirs
from engine.server._rows import take_rows
from engine.server._store_trouble import StoreTrouble

T = TypeVar("T")
_log = logging.getLogger("engine.server")

# every script is idempotent for files made before the component was versioned
_CALLS_MIGRATIONS = (
    """
    CREATE TABLE IF NOT EXISTS calls (
        seq INTEGER PRIMARY KEY,
        project_id TEXT NOT NULL,
        id TEXT NOT NULL,
        op_name TEXT,
        display_name TEXT,
        trace_id TEXT,
        parent_id TEXT,
        thread_id TEXT,
        turn_id TEXT,
        started_at_us INTEGER,
        attributes TEXT,
        inputs TEXT,
        otel_dump TEXT,
        wb_user_id TEXT,
        wb_run_id TEXT,
        wb_run_step INTEGER,
        ended_at_us INTEGER,
        exception TEXT,
        output TEXT,
        summary TEXT,
        wb_run_step_end INTEGER,
        UNIQUE (project_id, id)
    );
    CREATE INDEX IF NOT EXISTS calls_trace ON calls (project_id, trace_id);
    """,
    # An index for each column a call query filters or sorts on (``_calls_sql`` emits no
    # other): a stream reads rows in index order instead of sorting the project, and an
    # ``IN`` filter seeks instead of scanning. Each entry ends with the rowid (``seq``), the
    # tie-break of every order, so ``ORDER BY col, seq`` needs no sort step either. Columns
    # most calls leave NULL get partial indexes: each index costs every insert (these
    # twelve as full indexes doubled the writer's CPU per call; as they are, +45%), and a
    # partial one costs nothing for a NULL. Filters on them seek; a sort on them is one
    # sort per stream. ``tests/server/test_query_plans.py`` pins the plans.
    "".join(
        [f"CREATE INDEX IF NOT EXISTS calls_by_{c} ON calls (project_id, {c});"
         for c in ("started_at_us", "ended_at_us", "op_name", "parent_id")]
        + [f"CREATE INDEX IF NOT EXISTS calls_by_{c} ON calls (project_id, {c}) "
           f"WHERE {c} IS NOT NULL;"
           for c in ("display_name", "thread_id", "turn_id", "wb_user_id", "wb_run_id",
                     "wb_run_step", "wb_run_step_end", "exception")]
    ),  # fmt: skip
    # The parent index ends with the start time, so the list every trace view asks for
    # first, root calls newest first (``trace_roots_only``, ``started_at`` desc), comes
    # straight out of it: on 2M calls 0.4 ms instead of ~400 ms spent sorting every root.
    # Only started calls (``op_name IS NOT NULL``, in every call query): counting the roots
    # reads no rows (15 ms instead of ~200 on 2M calls).
    """
    DROP INDEX IF EXISTS calls_by_parent_id;
    CREATE INDEX calls_by_parent_id ON calls (project_id, parent_id, started_at_us)
        WHERE op_name IS NOT NULL;
    """,
)
_MORE_MIGRATIONS = (
    """
    CREATE TABLE IF NOT EXISTS obj_versions (
        project_id TEXT NOT NULL,
        object_id TEXT NOT NULL,
        digest TEXT NOT NULL,
        version_index INTEGER NOT NULL,
        kind TEXT NOT NULL,
        base_object_class TEXT,
        leaf_object_class TEXT,
        val TEXT NOT NULL,
        wb_user_id TEXT,
        created_at_us INTEGER NOT NULL,
        deleted_at_us INTEGER,
        PRIMARY KEY (project_id, object_id, digest),
        UNIQUE (project_id, object_id, version_index)
    );
    CREATE TABLE IF NOT EXISTS table_rows (
        project_id TEXT NOT NULL, digest TEXT NOT NULL, val TEXT NOT NULL,
        PRIMARY KEY (project_id, digest)
    );
    CREATE TABLE IF NOT EXISTS table_versions (
        project_id TEXT NOT NULL, digest TEXT NOT NULL, row_digests TEXT NOT NULL,
        PRIMARY KEY (project_id, digest)
    );
    CREATE TABLE IF NOT EXISTS file_blobs (
        project_id TEXT NOT NULL, digest TEXT NOT NULL, content BLOB NOT NULL,
        PRIMARY KEY (project_id, digest)
    );
    CREATE TABLE IF NOT EXISTS feedback (
        project_id TEXT NOT NULL, id TEXT NOT NULL, created_at_us INTEGER NOT NULL,
        doc TEXT NOT NULL, PRIMARY KEY (project_id, id)
    );
    CREATE TABLE IF NOT EXISTS costs (
        project_id TEXT NOT NULL, id TEXT NOT NULL, created_at_us INTEGER NOT NULL,
        doc TEXT NOT NULL, PRIMARY KEY (project_id, id)
    );
    CREATE TABLE IF NOT EXISTS action_runs (
        project_id TEXT NOT NULL, action_ref TEXT NOT NULL, call_id TEXT NOT NULL,
        created_at_us INTEGER NOT NULL, PRIMARY KEY (project_id, action_ref, call_id)
    );
    """,
    # "latest" is an alias too: it follows the last version created or re-created
    """
    CREATE TABLE IF NOT EXISTS obj_aliases (
        project_id TEXT NOT NULL, object_id TEXT NOT NULL, alias TEXT NOT NULL,
        digest TEXT NOT NULL, PRIMARY KEY (project_id, object_id, alias)
    );
    CREATE TABLE IF NOT EXISTS obj_tags (
        project_id TEXT NOT NULL, object_id TEXT NOT NULL, digest TEXT NOT NULL,
        tag TEXT NOT NULL, PRIMARY KEY (project_id, object_id, digest, tag)
    );
    """,
    # weave's project TTL settings: a project without a row keeps its calls
    """
    CREATE TABLE IF NOT EXISTS project_settings (
        project_id TEXT PRIMARY KEY, retention_days INTEGER, updated_at_us INTEGER NOT NULL,
        updated_by TEXT
    );
    """,
    # the file's own random id (Store.store_id), made once with the file or its upgrade
    """
    CREATE TABLE IF NOT EXISTS store_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    INSERT OR IGNORE INTO store_info VALUES ('store_id', lower(hex(randomblob(16))));
    """,
    # feedback by what it is about: a call's feedback, a page of calls with their feedback
    # (``_sqlite_docs``): 200k rows scanned and decoded per page (~2 s) before it
    """
    CREATE INDEX IF NOT EXISTS feedback_by_ref ON feedback (project_id, json_extract(doc, '$.weave_ref'));
    """,
)
MIGRATIONS = {"calls": _CALLS_MIGRATIONS, "more": _MORE_MIGRATIONS}
# What the query planner assumes until someone runs ANALYZE: a store holds many calls per
# project, a handful per id, trace, parent or thread, thousands per op. Without these, on
# a fresh file it takes ``project_id = ?`` for a selective lookup and streams a whole
# project in start order even for ``call_ids=[one id]``. Per index: rows, rows per
# project, rows per (project, column) value (the ``sqlite_stat1`` rows ANALYZE writes).
_SPARSE = "100000 10000 10"
_PLANNER_STATS = {
    "sqlite_autoindex_calls_1": "1000000 100000 1", "calls_trace": "1000000 100000 10",
    "calls_by_started_at_us": "1000000 100000 1", "calls_by_ended_at_us": "1000000 100000 1",
    "calls_by_op_name": "1000000 100000 2000", "calls_by_parent_id": "1000000 100000 5 1",
    "calls_by_display_name": _SPARSE, "calls_by_thread_id": _SPARSE,
    "calls_by_turn_id": _SPARSE, "calls_by_wb_user_id": _SPARSE, "calls_by_wb_run_id": _SPARSE,
    "calls_by_wb_run_step": _SPARSE, "calls_by_wb_run_step_end": _SPARSE,
    "calls_by_exception": _SPARSE,
}  # fmt: skip
# A stream connection's page cache, which also sizes what its sorter holds before spilling
# to a temporary file: under the 64 MiB of connect() a page that SQLite sorts held all its
# rows in memory, ~50 MB for 50 calls of 1 MB, per request. A stream reads its pages once,
# and sorts are no slower (bench.serve_queries at 1M calls, the latency sort: 1.60, 1.48,
# 1.80 s -> 1.33, 1.46, 1.36 s in alternating runs)
STREAM_CACHE_KIB = 8192
# Streams kept ready for the next ones; more connections are closed when their stream ends
_IDLE_STREAM_CONNS = 4
# reader threads: reads run side by side (WAL), each thread with its own connection
READERS = 4


def default_db_path() -> Path:
    """``$XDG_DATA_HOME/engine/traces.db``, else ``~/.local/share/engine/traces.db``."""
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(data_home) / "engine" / "traces.db"


def create_db_file(path: Path) -> None:
    """Create the database file (and its folder) owner-only before SQLite opens it."""
    make_private_dirs(path.parent)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)


def ref_name(uri: str | None) -> str | None:
    """``weave:///entity/project/op/<name>:<digest>`` → ``<name>`` (the uri when not a ref)."""
    if uri is None:
        return None
    parts = uri.removeprefix("weave:///").split("/")
    return parts[3].rsplit(":", 1)[0] if len(parts) >= 4 else uri


# A call row is a few KiB of JSON: with SQLite's default 4 KiB pages nearly every row spills
# into overflow pages, each written (and checksummed into the WAL) on its own. 32 KiB pages
# hold several rows: ~25% less writer CPU per row of the bench's 4 KB calls, a smaller file.
PAGE_BYTES = 32768
# A commit copies the WAL back into the file (a checkpoint: each page written again, and an
# fsync) once the WAL holds this many pages: 256 MiB of 32 KiB pages, not SQLite's 1,000
# (32 MiB). Index pages that many commits touch in between are written back once, not
# once per checkpoint: `engine ingest` into SQLite (bench.ingest_file --sink sqlite, 200k
# 4 KB calls, 3 runs alternating) 39–44k → 48–51k calls/s, the server's CPU 19–21 → 16.5–18
# µs per call; random ids (UUIDv4 clients, OTLP) ~21k → ~27k calls/s at 500k calls. The WAL
# file grows to about this size while calls pour in; closing the store folds it back.
WAL_CHECKPOINT_PAGES = 8192


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.create_function("engine_ref_name", 1, ref_name, deterministic=True)
    # takes effect only on a new file (before WAL mode writes its header); files made by
    # older servers keep their page size
    conn.execute(f"PRAGMA page_size={PAGE_BYTES}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA cache_size=-65536")  # 64 MiB: keeps the (project_id, id) index hot
    return conn


class Transaction:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any error so a batch lands whole or not at all."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        self._conn.execute("ROLLBACK" if exc_type else "COMMIT")


def migrate(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, version INTEGER)"
    )
    with Transaction(conn):
        for component, scripts in MIGRATIONS.items():
            row = conn.execute(
                "SELECT version FROM schema_versions WHERE component = ?", (component,)
            ).fetchone()
            if component == "calls" and row and row[0] < len(scripts):  # an older file's
                # calls get new indexes: may take a while (the other tables' steps are instant)
                _log.warning("engine serve: upgrading the database's %s tables from version %d "
                             "to %d (indexes are built over the rows it holds: about a second "
                             "per million calls)", component, row[0], len(scripts))  # fmt: skip
            for script in scripts[row[0] if row else 0 :]:
                for statement in filter(str.strip, script.split(";")):
                    conn.execute(statement)
            conn.execute(
                "INSERT OR REPLACE INTO schema_versions VALUES (?, ?)", (component, len(scripts))
            )


def hint_planner(conn: sqlite3.Connection) -> None:
    """Give each calls index without statistics the assumed ones (real ANALYZE rows stay)."""
    with Transaction(conn):
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'").fetchone():
            conn.execute("PRAGMA analysis_limit = 1")  # only creates sqlite_stat1: cheap
            conn.execute("ANALYZE calls")
        known = {idx for (idx,) in conn.execute("SELECT idx FROM sqlite_stat1 WHERE tbl = 'calls'")}
        conn.executemany(
            "INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES ('calls', ?, ?)",
            [(idx, stat) for idx, stat in _PLANNER_STATS.items() if idx not in known],
        )
    conn.execute("ANALYZE sqlite_schema")  # this connection reloads them; later ones read them


class Checkpointer:
    """Copies the WAL back into the database file on a thread of its own, so the writer
    goes on writing meanwhile.

    A commit that finds the WAL past ``WAL_CHECKPOINT_PAGES`` copies it itself (SQLite's
    auto-checkpoint), and the writer waited for every page to be written again and the
    file's fsync: 37% of the writer thread's time in a profile of `engine ingest` into
    SQLite. Once the writer has changed ``EVERY_ROWS`` rows since the last pass, this
    thread runs a PASSIVE checkpoint (never waits for a lock; it copies what no reader
    still needs), at most every ``spacing_s``; the writer's own checkpoint then finds
    little left to copy and restarts the WAL, so the file stays near
    ``WAL_CHECKPOINT_PAGES`` (a checkpointer alone never catches up with constant writes:
    the WAL grew to 11 GB when one was tried without the writer's). A trickle of writes
    never starts a pass (each is two fsyncs): as before, the WAL keeps it. The writer
    alone, 200k of the bench's 4 KB calls in 1,000-call transactions, 4 runs alternating:
    57–59k → 67–75k calls/s.
    """

    EVERY_ROWS = 1_000  # ~4 MB of the bench's calls

    def __init__(self, path: Path, spacing_s: float = 0.05) -> None:
        self._path = path
        self._conn = connect(path)
        self._spacing_s = spacing_s
        self._due = threading.Event()
        self._closed = threading.Event()
        self._rows_at_last = 0  # the writer's total_changes when a pass was last asked for
        self.passes = 0
        self.last: tuple[int, int, int] | None = None  # (busy, WAL frames, frames copied)
        self._failed_once = False
        self._thread = threading.Thread(target=self._run, name="engine-store-checkpoint",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def wrote(self, total_changes: int) -> None:
        """Called on the writer thread after each write with its connection's
        ``total_changes``; asks for a pass once enough rows changed."""
        if total_changes - self._rows_at_last >= self.EVERY_ROWS:
            self._rows_at_last = total_changes
            self._due.set()

    def _run(self) -> None:
        try:
            while True:
                self._due.wait()
                if self._closed.is_set():
                    return
                self._due.clear()
                self._checkpoint()
                self._closed.wait(self._spacing_s)
        finally:
            self._conn.close()

    def _checkpoint(self) -> None:
        try:
            self.last = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.passes += 1
        except sqlite3.Error as exc:  # a full disk: the writer's commits say so, and retry
            if not self._failed_once:
                self._failed_once = True
                _log.warning("engine serve: copying the WAL back into %s failed (%s); the "
                             "writer's commits copy it instead", self._path, exc)

    def close(self) -> None:
        self._closed.set()
        self._due.set()
        self._thread.join()


_SQLITE_FULL = 13
_SQLITE_BUSY = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED


class Database:
    """A SQLite file with a writer thread and ``READERS`` reader threads, each with its own
    connection.

    ``await db.write(fn, *args)`` runs ``fn(conn, *args)`` on the writer thread,
    ``await db.read(fn, *args)`` on a reader thread.
    """

    def __init__(self, path: Path) -> None:
        create_db_file(path)
        self.path = path
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="engine-store-writer")
        self._reader = ThreadPoolExecutor(READERS, thread_name_prefix="engine-store-reader")
        self._wconn = connect(path)
        migrate(self._wconn)
        hint_planner(self._wconn)
        self.checkpointer = Checkpointer(path)
        # PRAGMA data_version's connection: its values compare only with its own
        self._rconn = connect(path)
        self._rlock = threading.Lock()
        self._local = threading.local()  # each reader thread's connection
        self._conns: list[sqlite3.Connection] = []  # every one, closed at the end
        self._conns_lock = threading.Lock()  # also guards the idle stream connections
        self._idle_stream_conns: list[sqlite3.Connection] = []
        self._trouble = StoreTrouble()

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._on(self._writer, self._write, fn, *args)

    def _write(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(self._wconn, *args)
        finally:
            self.checkpointer.wrote(self._wconn.total_changes)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(conn, *args)`` on one of the reader threads, with that thread's connection:
        a slow read (a sort on latency, a text search over every call) holds one thread,
        not every other reader (before, one reader thread: a 7 ms page waited 2.7 s behind
        two such sorts)."""
        return await self._on(self._reader, self._in_reader, fn, *args)

    def _in_reader(self, fn: Callable[..., T], *args: Any) -> T:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._new_conn()
        return fn(conn, *args)

    def _new_conn(self) -> sqlite3.Connection:
        conn = connect(self.path)
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    async def data_version(self) -> int:
        """``PRAGMA data_version`` of one connection: it changes whenever another connection
        (the writer, another process) commits."""
        return await self._on(self._reader, self._data_version)

    def _data_version(self) -> int:
        with self._rlock:
            return self._rconn.execute("PRAGMA data_version").fetchone()[0]

    async def _on(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        except sqlite3.OperationalError as exc:
            error = self._answer_for(exc)
            if error is None:
                raise
            raise error from exc

    def _answer_for(self, exc: sqlite3.OperationalError) -> Any:
        """A full disk or a database another process holds: an answer with a reason
        (retriable: the client keeps the calls and sends them again), see
        :mod:`engine.server._store_trouble`; None for any other error."""
        code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11; else the text
        primary = None if code is None else code & 0xFF
        text = str(exc)
        if primary == _SQLITE_FULL or (primary is None and "disk is full" in text):
            return self._trouble.answer(507, f"the store's disk is full ({self.path}: {text}); "
                                        "nothing of this request was stored: send it again "
                                        "once there is room")
        if primary in _SQLITE_BUSY or (primary is None and "database is locked" in text):
            return self._trouble.answer(503, f"the store's database is locked by another "
                                        f"process ({self.path}: {text}); nothing of this "
                                        "request was stored: send it again")
        return None

    async def stream(
        self, sql: str, params: Sequence[Any], first_rows: int, rows: int,
        max_bytes: int, sized: tuple[int, ...],
    ) -> AsyncIterator[list[tuple]]:
        """The rows of ONE statement, ``first_rows`` then ``rows`` at a time, on the reader
        thread, each chunk cut short once the values at ``sized`` (the big columns) of its
        rows pass ``max_bytes`` (``_rows.take_rows``). Re-running a query per page
        (LIMIT/OFFSET) cost O(rows²): every page stepped over the offset and re-sorted
        whatever no index orders. The statement runs on a connection of its own: its read
        snapshot lasts as long as the stream, and on the shared reader connection it would
        hide later writes from every other read. The statement starts and the first chunk
        is read in one hand-off to the reader thread, and a stream that ends with it gives
        its connection back there too: a short page costs one hand-off, as a plain read.
        Close the iterator (``contextlib.aclosing``) when stopping early.
        """
        conn, cursor, chunk, done = await self._on(
            self._reader, self._open_stream, sql, params, first_rows, max_bytes, sized
        )
        try:
            while True:
                if chunk:
                    yield chunk
                if done:
                    return
                chunk, done = await self._on(self._reader, take_rows, cursor, rows, max_bytes, sized)
        finally:
            if conn is not None:  # shielded: a cancelled stream still hands it back
                closing = asyncio.get_running_loop().run_in_executor(
                    self._reader, self._close_stream, conn, cursor
                )
                await asyncio.shield(closing)

    def _open_stream(self, sql: str, params: Sequence[Any], first_rows: int, max_bytes: int,
                     sized: tuple[int, ...]) -> tuple[Any, Any, list[tuple], bool]:  # fmt: skip
        """The stream's connection and cursor (both None when the first chunk ended it)."""
        with self._conns_lock:
            conn = self._idle_stream_conns.pop() if self._idle_stream_conns else None
        if conn is None:
            conn = connect(self.path)
            conn.execute(f"PRAGMA cache_size=-{STREAM_CACHE_KIB}")
        try:
            cursor = conn.execute(sql, params)
            chunk, done = take_rows(cursor, first_rows, max_bytes, sized)
        except BaseException:
            conn.close()
            raise
        if done:
            self._close_stream(conn, cursor)
            return None, None, chunk, True
        return conn, cursor, chunk, False

    def _close_stream(self, conn: sqlite3.Connection, cursor: sqlite3.Cursor) -> None:
        cursor.close()  # ends the statement, and with it the read snapshot
        with self._conns_lock:
            if len(self._idle_stream_conns) < _IDLE_STREAM_CONNS:
                self._idle_stream_conns.append(conn)
                return
        conn.close()

    def _close_readers(self) -> None:
        with self._conns_lock:
            conns, self._conns = [*self._idle_stream_conns, *self._conns, self._rconn], []
            self._idle_stream_conns.clear()
        for conn in conns:
            conn.close()

    async def close(self) -> None:
        self._reader.shutdown(wait=True)  # the reads under way end first
        self._close_readers()
        self.checkpointer.close()  # before the writer's close folds the WAL back
        await self._on(self._writer, self._wconn.close)
        self._writer.shutdown(wait=True)
