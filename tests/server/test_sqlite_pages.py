"""The SQLite store's file: new files get large pages, files of older servers keep theirs."""

import asyncio
import contextlib
import sqlite3

from engine.server._sqlite_db import PAGE_BYTES, STREAM_CACHE_KIB
from engine.server._sqlite_store import SQLiteStore
from engine.server._store import CallsQuery
from engine.wire.query import SortBy
from tests.server.test_store_contract import P, _call


def _page_size(path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute("PRAGMA page_size").fetchone()[0]


def test_a_new_file_gets_large_pages(tmp_path):
    store = SQLiteStore(tmp_path / "t.db")
    asyncio.run(store.close())
    assert _page_size(tmp_path / "t.db") == PAGE_BYTES


def test_a_file_with_small_pages_keeps_them_and_takes_calls(tmp_path):
    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:  # a bare `with` only commits
        conn.execute("PRAGMA page_size=4096")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE leftover (x)")
    store = SQLiteStore(path)

    async def roundtrip() -> int:
        await store.insert_calls([], [], [_call(f"c{i}") for i in range(3)])
        count = await store.count_calls(CallsQuery(project_id=P))
        await store.close()
        return count

    assert asyncio.run(roundtrip()) == 3
    assert _page_size(path) == 4096


def test_a_stream_connection_keeps_a_small_cache(tmp_path):
    """SQLite's sorter holds up to cache_size of a sorted page's rows: a stream's is small."""
    store = SQLiteStore(tmp_path / "t.db")

    async def stream_then_cache_size() -> int:
        await store.insert_calls([], [], [_call(f"c{i}") for i in range(3)])
        by_input = (SortBy(field="inputs.n", direction="desc"),)
        assert len([p async for p in store.query_calls(CallsQuery(project_id=P, sort_by=by_input))]) == 1
        (conn,) = store._db._idle_stream_conns
        size = conn.execute("PRAGMA cache_size").fetchone()[0]
        await store.close()
        return size

    assert asyncio.run(stream_then_cache_size()) == -STREAM_CACHE_KIB
