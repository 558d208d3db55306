"""The default spool (``spool_dir = "auto"``): what an outage leaves comes back by itself.

Before, an engine with default settings wrote what it could not deliver to the shared
dead-letter file, and only ``engine replay --to URL`` sent it: an eval that ran through a
server outage (or was stopped during one) had holes in its traces until someone replayed
by hand. Now every engine spools under ``$XDG_STATE_HOME/engine/spool/<host>-<port>-<digest
of the URL>``: its sender sends the spool when the server answers again, and the next engine
toward the same server sends what an earlier one left."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from engine.common._config import EngineConfig, default_spool_dir, spool_path
from engine.sender._spool import Spool
from tests.engine.helpers import PROJECT, make_engine, trace_calls
from tests.faultserver import FaultServer
from tests.pipeline import ROOT, Sandbox, poll_until

pytestmark = pytest.mark.integration


def test_the_default_spool_is_one_folder_per_server_under_the_users_state(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    spools = {url: default_spool_dir(url) for url in (
        "http://127.0.0.1:8080", "http://127.0.0.1:8081", "https://trace.example.com",
        "https://trace.example.com/team-b", "http://user:secret@10.0.0.7:9000/")}
    assert len(set(spools.values())) == len(spools)  # no server is sent another's calls
    for folder in spools.values():
        assert folder.parent == tmp_path / "engine" / "spool"
        assert "secret" not in str(folder) and "user" not in folder.name
    assert spools["http://127.0.0.1:8080"].name.startswith("127.0.0.1-8080-")
    assert default_spool_dir("https://trace.example.com/") == spools["https://trace.example.com"]
    # one server, however its URL is spelled (each spelling had a spool of its own)
    for spelling in ("HTTPS://Trace.Example.COM", "https://trace.example.com:443/"):
        assert default_spool_dir(spelling) == spools["https://trace.example.com"], spelling
    assert default_spool_dir("https://trace.example.com:443/team-b/") == \
        spools["https://trace.example.com/team-b"]
    assert default_spool_dir("http://localhost:80") == default_spool_dir("http://LOCALHOST/")
    assert default_spool_dir("http://localhost") != default_spool_dir("http://127.0.0.1")
    assert spool_path(EngineConfig(url="http://127.0.0.1:8080")) == str(
        spools["http://127.0.0.1:8080"])
    for off in (None, "off", "OFF", "none", ""):
        assert spool_path(EngineConfig(url="http://127.0.0.1:8080", spool_dir=off)) is None
    assert spool_path(EngineConfig(spool_dir=str(tmp_path / "mine"))) == str(tmp_path / "mine")


def test_an_engine_that_delivers_everything_makes_no_spool_folder(tmp_path):
    """The default spool's folder is made by the first segment: not one empty folder per
    server an engine ever delivered to (a bench, a test suite: a port each)."""
    with FaultServer() as server, make_engine(server.url, tmp_path) as eng:
        ids = trace_calls(eng.producer(), 20)
        assert eng.flush(timeout_s=30)
        assert server.stored_ids(PROJECT) == set(ids)
    assert default_spool_dir(server.url).parent.is_dir()  # checked at start: writable
    assert not default_spool_dir(server.url).exists()


def test_an_outage_spilled_by_default_is_sent_by_the_sender_when_the_server_is_back(tmp_path,
                                                                                    capfd):
    """The server down while producers wait for ring space: what fails goes to disk at once
    (``SPILL_AFTER_S``); with default settings that is the spool, and the sender sends it as
    soon as the server answers. No dead letter, no ``engine replay``."""
    dead = tmp_path / "dead_letters.jsonl"
    with FaultServer() as server:
        spool = Spool(default_spool_dir(server.url))
        server.down()
        with make_engine(server.url, tmp_path, delivery_deadline_s=60.0, shutdown_timeout_s=30.0,
                         backoff_max_ms=500) as eng:
            ids = trace_calls(eng.producer(), 1500, payload_bytes=2000)
            assert eng.stats()["ring"]["full_waits"] > 0  # the producer did wait for room
            assert poll_until(lambda: eng.stats()["spooled_items"] > 0, timeout_s=60)
            server.up()
            assert server.wait_for(lambda: server.stored_ids(PROJECT) == set(ids), timeout_s=120)
            assert poll_until(lambda: spool.count_pending == 0, timeout_s=30)
            eng.close()
            stats = eng.stats()
        assert stats["spool_replayed_items"] > 0
        assert stats["dead_letters"] == 0 and stats["undelivered"] == 0
        assert not dead.exists()
        assert all(server.is_complete(PROJECT, call_id) for call_id in ids)
    exit_line = next(line for line in capfd.readouterr().err.splitlines() if "engine: " in line)
    assert (f"its spool replay delivered {stats['spool_replayed_items']:,} spooled items; the "
            "spool holds 0 items now") in exit_line, exit_line


_PROGRAM = textwrap.dedent("""
    import sys
    from engine import Engine
    from tests.engine.helpers import trace_calls

    url, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with Engine(url=url, project="test-entity/test-project", compression="none",
                ring_bytes=1 << 20, shutdown_timeout_s=3, backoff_max_ms=500) as eng:
        ids = trace_calls(eng.producer(), count, prefix=prefix, payload_bytes=2000)
    print(" ".join(ids))
""")


def _program(sandbox: Sandbox, url: str, prefix: str, count: int) -> list[str]:
    """A traced program with default settings (a subprocess, the sandbox's HOME and state):
    the ids of the calls it made."""
    done = subprocess.run([sys.executable, "-c", _PROGRAM, url, prefix, str(count)],
                          env=sandbox.env(), cwd=str(ROOT), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.split()


def test_what_a_program_left_in_the_default_spool_is_sent_by_the_next_one(tmp_path,
                                                                         monkeypatch):
    """A program that ends while the server is down (an eval stopped during an outage)
    leaves its calls in the default spool; the next program tracing to the same server sends
    them, with its own, and no replay by hand. One tracing to another server does not."""
    sandbox = Sandbox(tmp_path)
    monkeypatch.setenv("XDG_STATE_HOME", str(sandbox.state))  # default_spool_dir's
    with FaultServer() as server, FaultServer() as other:
        server.down()
        left = _program(sandbox, server.url, "outage", 300)
        folder = default_spool_dir(server.url)
        assert Spool(folder).count_pending > 0 and not server.stored_ids(PROJECT)
        assert not sandbox.dead_letter_path.exists()
        mine = _program(sandbox, other.url, "other", 5)
        assert other.stored_ids(PROJECT) == set(mine)  # not the other server's spool
        server.up()
        after = _program(sandbox, server.url, "after", 5)
        assert server.wait_for(lambda: server.stored_ids(PROJECT) == set(left + after),
                               timeout_s=60)
        assert all(server.is_complete(PROJECT, call_id) for call_id in left)
        assert Spool(folder).count_pending == 0


def test_engine_replay_finds_the_default_spool_of_its_server(tmp_path):
    sandbox = Sandbox(tmp_path)
    with FaultServer() as server:
        server.down()
        left = _program(sandbox, server.url, "outage", 100)
        server.up()
        done = sandbox.replay(server.url)
        assert done.returncode == 0, done.stderr[-3000:]
        assert server.stored_ids(PROJECT) == set(left)


def test_a_default_spool_that_cannot_be_made_leaves_the_dead_letters_and_says_so(
        tmp_path, monkeypatch, caplog):
    """A state directory the user cannot write (a read-only home in a container) is no
    reason to refuse to trace: the engine says so once and dead-letters as without a spool.
    A ``spool_dir`` the user named is still refused (ConfigError, as before)."""
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "a-file"))
    dead = tmp_path / "dead_letters.jsonl"
    with FaultServer() as server:
        server.down()
        with caplog.at_level("WARNING", logger="engine"), make_engine(
                server.url, tmp_path, delivery_deadline_s=0.3, shutdown_timeout_s=2) as eng:
            ids = trace_calls(eng.producer(), 10)
            assert not eng.flush(timeout_s=30)
        assert "no spool (" in caplog.text and "Not a directory" in caplog.text
        assert eng.stats()["spooled_items"] == 0 and eng.stats()["dead_letters"] > 0
        assert dead.exists() and not server.stored_ids(PROJECT)
        server.up()
        done = subprocess.run([sys.executable, "-m", "engine", "replay", "--to", server.url,
                               "--dead-letters", str(dead)], capture_output=True, text=True,
                              timeout=120, cwd=str(ROOT),
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 0, done.stderr[-3000:]
        assert server.stored_ids(PROJECT) == set(ids)
