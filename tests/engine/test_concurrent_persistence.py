"""Any number of engines with default settings plus ``engine replay``, at the same time, on
one machine: no call lost, none doubled. (Measured before the claim protocol: 28,400 of
33,950 calls lost replaying the default dead-letter file while an engine wrote it.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.faultserver import FaultServer
from tests.pipeline import Pipeline, Sandbox, account

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_two_engines_and_replays_meanwhile_on_the_default_paths_lose_and_double_nothing(
        tmp_path):
    sandbox = Sandbox(tmp_path)  # both engines and every replay share its default paths
    with FaultServer() as unreachable, FaultServer() as server:
        unreachable.down()  # the engines' server: every batch is dead-lettered at its deadline
        settings = {"delivery_deadline_s": 0.2, "shutdown_timeout_s": 1.0, "linger_ms": 5,
                    "backoff_initial_ms": 20, "backoff_max_ms": 50}
        runs = [Pipeline(sandbox, unreachable.url, producers=1, calls=1500, pace_s=0.002,
                         settings=settings, name=f"engine{i}").start() for i in range(2)]
        try:
            replays = []  # each takes a second or so: several while the engines write
            while any(run.proc.poll() is None for run in runs):
                replays.append(sandbox.replay(server.url))
            for run in runs:
                assert run.wait(timeout_s=30) == 0
                run.wait_sender_gone(timeout_s=30)
                assert run.stats["dead_letters"] > 0  # it wrote while replays claimed
                assert run.stats["unpersisted_unwritable"] == run.stats["parked_items"] == 0
        finally:
            for run in runs:
                run.stop()
        replays.append(sandbox.replay(server.url))  # what was written after the last one
        assert len(replays) >= 3
        assert all(r.returncode == 0 for r in replays), [r.stderr for r in replays if r.returncode]
        produced = [call for run in runs for call in run.produced()]
        result = account(produced, server.snapshot(), [sandbox.dead_letter_path])
        duplicates = server.duplicate_deliveries()
    assert result.produced == 2 * 2 * 1500
    assert (result.delivered, result.lost) == (result.produced, 0), result.lost_ids[:5]
    assert duplicates == 0  # each letter was replayed exactly once
    assert not sandbox.dead_letter_path.exists()
    assert not list(sandbox.dead_letter_path.parent.glob("*.claimed-*"))


def _write_letters(path, ids):
    from engine.sender._deadletter import DeadLetters

    with DeadLetters(path) as letters:
        letters.add_batch(reason="deadline", status=None, route="/v2/e/p/calls/complete",
                          items=[(call_id, "e/p", b'{"project_id":"e/p","id":"%s","inputs":{}}'
                                  % call_id.encode()) for call_id in ids])


def _letters_by_file(path):
    """{(device, inode): the call ids of the letters in it} over the dead-letter file and its
    claimed copies (two names of one file count once)."""
    from engine.sender._deadletter import claimed_files, read_dead_letters

    files = {}
    for name in [str(path)] * path.exists() + claimed_files(path):
        stat = os.stat(name)
        files[(stat.st_dev, stat.st_ino)] = [letter.call_id for letter in read_dead_letters(name)]
    return files


@pytest.mark.parametrize("signum", ["SIGKILL", "SIGTERM"])
def test_a_replay_killed_half_way_leaves_its_claim_for_the_next_replay(tmp_path, signum):
    """Stopped while its first request waits at the server (received, unanswered)."""
    sandbox = Sandbox(tmp_path)
    ids = [f"0190a0b0-0000-7000-8000-{i:012d}" for i in range(2000)]
    _write_letters(sandbox.dead_letter_path, ids)
    with FaultServer(stall_s=60) as server:  # the first replay waits on its first request
        first = subprocess.Popen([sys.executable, "-m", "engine", "replay", "--to", server.url],
                                 env=sandbox.env(), cwd=str(sandbox.root),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            # its request is at the server, unanswered: claimed, and sending
            assert server.wait_for(lambda: server.stalled >= 1, timeout_s=30), "no request"
            assert first.poll() is None
            first.send_signal(getattr(signal, signum))
            _, err = first.communicate(timeout=30)
        finally:
            if first.poll() is None:
                first.kill()
                first.communicate()
        if signum == "SIGTERM":  # it stops as on Ctrl-C, and says so
            assert first.returncode == 143, err.decode()
            assert "engine replay: stopped before the end" in err.decode(), err.decode()
            assert "Traceback" not in err.decode(), err.decode()
        assert server.stored_ids("e/p") == set()
        folder = sandbox.dead_letter_path.parent
        assert len(list(folder.glob("*.claimed-*"))) == 1  # what it claimed is still there
        assert list(_letters_by_file(sandbox.dead_letter_path).values()) == [ids]  # once
        server.stall_s = 0
        again = sandbox.replay(server.url)
        assert again.returncode == 0, again.stderr
        assert "2000 items delivered" in again.stdout, again.stdout
        assert server.stored_ids("e/p") == set(ids)
    assert not list(folder.glob("*.claimed-*")) and not sandbox.dead_letter_path.exists()
