"""The SQLite store reads on several threads: a slow read (a sort on latency, a text search
over every call) holds one of them, and every other read goes on beside it."""

import asyncio
import time

from engine.server._sqlite_db import READERS, Database
from tests.server.harness import run_on


def _slow(conn):
    time.sleep(1.0)  # a read that takes a second (one holding its thread, as a full scan does)
    return conn.execute("SELECT 1").fetchall()


def test_a_slow_read_holds_one_reader_thread_not_every_read(tmp_path):
    async def go():
        db = Database(tmp_path / "t.db")
        try:
            slow = [asyncio.create_task(db.read(_slow)) for _ in range(READERS - 1)]
            await asyncio.sleep(0.1)  # they hold their threads
            began = time.monotonic()
            count = await db.read(lambda conn: conn.execute("SELECT count(*) FROM calls").fetchall())
            waited_s = time.monotonic() - began
            version = await db.data_version()  # on any thread, always the same connection's
            slow_rows = await asyncio.gather(*slow)
            return count, waited_s, version, slow_rows, await db.data_version()
        finally:
            await db.close()

    count, waited_s, version, slow_rows, version_after = run_on("asyncio", go())
    assert count == [(0,)] and slow_rows == [[(1,)]] * (READERS - 1)
    assert waited_s < 0.5  # before: one reader thread, this read waited for both slow ones
    assert version == version_after  # nothing committed in between


def test_every_connection_folds_the_wal_back_at_the_store_s_size_not_sqlite_s(tmp_path):
    """The writer checkpoints at WAL_CHECKPOINT_PAGES (256 MiB), not SQLite's 1,000 pages:
    index pages many commits touch are written back once (bench.ingest_file --sink sqlite:
    39–44k → 48–51k calls/s); readers carry the same setting."""
    from engine.server._sqlite_db import PAGE_BYTES, WAL_CHECKPOINT_PAGES, connect

    conn = connect(tmp_path / "t.db")
    try:
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == WAL_CHECKPOINT_PAGES
        assert WAL_CHECKPOINT_PAGES * PAGE_BYTES == 256 << 20
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def _insert_big_rows(conn, count):
    first = conn.execute("SELECT count(*) FROM calls").fetchone()[0]
    with conn:
        conn.executemany("INSERT INTO calls (project_id, id, op_name, inputs) VALUES (?, ?, 'op', ?)",
                         [("ent/proj", f"call-{first + i}", "x" * 4000) for i in range(count)])


def test_the_wal_is_copied_back_beside_the_writer_not_by_its_commits(tmp_path):
    """Below WAL_CHECKPOINT_PAGES the writer's commits leave every page in the WAL; once
    enough rows changed, the store's checkpoint thread copies them into the file meanwhile
    (the writer alone: 57–59k → 67–75k calls/s); a trickle of writes starts no pass (each is
    two fsyncs); the thread stops with the store."""
    import os
    import threading

    from engine.server._sqlite_db import Checkpointer

    path = tmp_path / "t.db"

    async def go():
        db = Database(path)
        try:
            for _ in range(10):  # a trickle: a few calls now and then
                await db.write(_insert_big_rows, 3)
            await asyncio.sleep(0.3)
            trickle = (db.checkpointer.passes, os.path.getsize(path))
            # a load: ~6 MB, far below the writer's own threshold
            await db.write(_insert_big_rows, Checkpointer.EVERY_ROWS + 500)
            deadline = time.monotonic() + 10
            while db.checkpointer.last is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            return trickle, os.path.getsize(path), db.checkpointer.last
        finally:
            await db.close()

    (passes, before), after, last = run_on("asyncio", go())
    assert passes == 0
    assert after >= before + 4_000_000, (before, after)  # the rows reached the file itself
    busy, frames, copied = last
    assert busy == 0 and frames > 0 and copied == frames
    assert not [t for t in threading.enumerate() if t.name == "engine-store-checkpoint"]
