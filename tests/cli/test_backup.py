"""``engine backup``: a consistent copy of a running ``engine serve`` SQLite store, taken
while calls keep arriving; the copy is whole, checked, owner-only, and serves."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time

import pytest

from engine.client import RemoteHTTPTraceServer
from engine.producer._engine import Engine
from engine.server import serve_subprocess

pytestmark = pytest.mark.integration

PROJECT = "acme/backup"
MAX_CALLS = 400_000  # the tracing thread stops once the copy is made, at the latest here


def _backup(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", "backup", *args], capture_output=True,
                          text=True, timeout=300)


def _count(url: str) -> int:
    with RemoteHTTPTraceServer(url) as client:
        return client.calls_query_stats({"project_id": PROJECT}).count


def test_a_backup_taken_while_calls_arrive_is_whole_and_serves(tmp_path):
    db, copy = tmp_path / "traces.db", tmp_path / "copy.db"
    traced: list[int] = []
    with serve_subprocess(db) as url:
        copied = threading.Event()

        def trace() -> None:  # calls keep coming until the copy is made
            with Engine(url=url, project=PROJECT) as eng:
                tracer = eng.producer()
                n = 0
                while not copied.is_set() and n < MAX_CALLS:
                    with tracer.call("predict", inputs={"i": n, "text": "x" * 500}) as call:
                        call.output = {"answer": n}
                    n += 1
                assert eng.flush(timeout_s=120)
                traced.append(n)

        tracing = threading.Thread(target=trace)
        tracing.start()
        try:
            deadline = time.monotonic() + 60
            while _count(url) < 2_000 and time.monotonic() < deadline:
                time.sleep(0.05)  # some calls stored before the copy
            done = _backup("--db", str(db), "--to", str(copy))
        finally:
            copied.set()
            tracing.join(180)
        assert done.returncode == 0, done.stderr
        assert traced and _count(url) == traced[0]  # the server kept every call meanwhile

    assert "checked" in done.stdout and str(copy) in done.stdout
    assert stat.S_IMODE(os.stat(copy).st_mode) == 0o600
    assert not [p for p in os.listdir(tmp_path) if ".partial-" in p or p.startswith("copy.db-")]
    with sqlite3.connect(copy) as conn:
        assert conn.execute("PRAGMA quick_check").fetchone() == ("ok",)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)  # one file
        stored = conn.execute("SELECT count(*) FROM calls").fetchone()[0]
        ids = conn.execute("SELECT count(DISTINCT id) FROM calls").fetchone()[0]
    # the store as it was at one instant: calls kept arriving after it
    assert 2_000 <= stored < traced[0] and ids == stored and f"{stored:,} calls" in done.stdout
    with serve_subprocess(copy) as url:  # restoring: serve the copy
        assert _count(url) == stored


def test_backup_refuses_clearly(tmp_path):
    missing = _backup("--db", str(tmp_path / "none.db"), "--to", str(tmp_path / "b.db"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    url = "clickhouse://default@127.0.0.1:8123/traces"
    clickhouse = _backup("--db", url, "--to", str(tmp_path / "b.db"))
    assert clickhouse.returncode == 2 and f"--db {url} is a server's store" in clickhouse.stderr
    assert "ClickHouse's own BACKUP" in clickhouse.stderr and "engine copy" in clickhouse.stderr
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n")
    wrong = _backup("--db", str(text), "--to", str(tmp_path / "b.db"))
    assert wrong.returncode == 1 and "is not a SQLite database" in wrong.stderr
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    foreign = _backup("--db", str(other), "--to", str(tmp_path / "b.db"))
    assert foreign.returncode == 1 and "not an engine serve store" in foreign.stderr
    assert not (tmp_path / "b.db").exists()  # nothing half-made is left
    assert not [p for p in os.listdir(tmp_path) if ".partial-" in p]
    with serve_subprocess(tmp_path / "t.db"):
        pass
    (tmp_path / "b.db").write_text("keep me")
    exists = _backup("--db", str(tmp_path / "t.db"), "--to", str(tmp_path / "b.db"))
    assert exists.returncode == 1 and "--force" in exists.stderr
    assert (tmp_path / "b.db").read_text() == "keep me"
    forced = _backup("--db", str(tmp_path / "t.db"), "--to", str(tmp_path / "b.db"), "--force")
    assert forced.returncode == 0, forced.stderr
    nodir = _backup("--db", str(tmp_path / "t.db"), "--to", str(tmp_path / "no" / "b.db"))
    assert nodir.returncode == 2 and "no such directory" in nodir.stderr


def _damaged_store(path) -> None:
    """An engine store's tables, then pages past the schema overwritten: its schema reads, the
    backup copies it page by page, and the copy's reads fail."""
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE schema_versions (v)")
    db.execute("CREATE TABLE calls (id TEXT PRIMARY KEY, body TEXT)")
    db.executemany("INSERT INTO calls VALUES (?, ?)", [(str(i), "x" * 500) for i in range(2000)])
    db.commit()
    db.close()
    with open(path, "r+b") as file:
        file.seek(4096 * 5)
        file.write(b"\xff" * 4096 * 20)


def test_a_damaged_store_and_a_directory_are_named_in_one_line(tmp_path):
    damaged = tmp_path / "damaged.db"
    _damaged_store(damaged)
    result = _backup("--db", str(damaged), "--to", str(tmp_path / "b.db"))
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    assert str(damaged) in result.stderr and "malformed" in result.stderr
    assert "unexpected" not in result.stderr
    assert not (tmp_path / "b.db").exists()
    assert not [p for p in os.listdir(tmp_path) if ".partial-" in p]
    folder = _backup("--db", str(tmp_path), "--to", str(tmp_path / "b.db"))
    assert folder.returncode == 2 and "is a directory" in folder.stderr


def test_a_compact_copy_leaves_out_the_space_deleted_calls_freed(tmp_path):
    db, copy = tmp_path / "traces.db", tmp_path / "compact.db"
    with serve_subprocess(db) as url:
        with Engine(url=url, project=PROJECT) as eng:
            tracer = eng.producer()
            ids = []
            for i in range(6_000):
                with tracer.call("predict", inputs={"i": i, "text": "x" * 2_000}) as call:
                    call.output = {"answer": i}
                ids.append(call.id)
            assert eng.flush(timeout_s=120)
        with RemoteHTTPTraceServer(url) as client:
            for at in range(0, 5_000, 1_000):  # most of them go
                client.calls_delete({"project_id": PROJECT, "call_ids": ids[at:at + 1_000]})
        assert _count(url) == 1_000
        plain, compact = tmp_path / "plain.db", copy
        assert _backup("--db", str(db), "--to", str(plain)).returncode == 0
        done = _backup("--db", str(db), "--to", str(compact), "--compact")
        assert done.returncode == 0, done.stderr
    assert "1,000 calls" in done.stdout and "compacted, checked" in done.stdout
    # SQLite keeps the freed pages in the store and in a plain copy; the compact copy drops them
    assert plain.stat().st_size > 3 * compact.stat().st_size, (plain.stat().st_size, compact.stat().st_size)
    assert stat.S_IMODE(os.stat(compact).st_mode) == 0o600
    with serve_subprocess(compact) as url:
        assert _count(url) == 1_000
