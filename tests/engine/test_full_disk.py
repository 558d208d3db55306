"""A full or unwritable disk under the dead letters: never a crash, one clear log line
naming the path and the OS error, the items that could not be persisted counted by reason,
kept in shared memory and recovered later; a non-zero exit from a command that lost data."""

from __future__ import annotations

import contextlib
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.faultserver import FaultServer
from tests.pipeline import Pipeline, Sandbox, account

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_SETTINGS = {"shutdown_timeout_s": 1.5, "delivery_deadline_s": 0.3, "ring_bytes": 4 << 20,
             "disk_keep_free_bytes": 0,  # the disk, not the setting (tests/engine/test_spool_bounds.py)
             "max_slots": 4, "backoff_initial_ms": 20, "backoff_max_ms": 100}
_SMALL_BYTES = 256 << 10
# the spool compresses (zstd): the same calls fill a tenth of what their dead letters take
_SMALL_SPOOL_BYTES = 16 << 10


@contextlib.contextmanager
def _tmpfs(path: Path, size_bytes: int):
    """Mount a tmpfs of ``size_bytes`` on ``path``; yields False where mounting is not
    permitted (the test then limits the sender's file size instead: RLIMIT_FSIZE)."""
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0700",
                              "tmpfs", str(path)], capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=True)


def _limit_sender(run: Pipeline, size_bytes: int) -> None:
    resource.prlimit(run.info["sender"], resource.RLIMIT_FSIZE, (size_bytes, size_bytes))


@pytest.mark.parametrize("spool_dir", ["off", "auto"])
def test_a_full_disk_under_the_dead_letters_keeps_the_rest_in_shared_memory_for_recovery(
        tmp_path, spool_dir):
    """The dead letters (no spool) or the default spool, both under the state folder."""
    sandbox = Sandbox(tmp_path)
    small = _SMALL_BYTES if spool_dir == "off" else _SMALL_SPOOL_BYTES
    with FaultServer() as server, _tmpfs(sandbox.state, small) as mounted:
        how = "tmpfs" if mounted else "RLIMIT_FSIZE on the sender"
        server.down()
        run = Pipeline(sandbox, server.url, producers=2, calls=1500, payload_bytes=500,
                       settings=dict(_SETTINGS, spool_dir=spool_dir)).start()
        try:
            if not mounted:
                _limit_sender(run, small)
            assert run.wait(timeout_s=30) == 0, run.log()[-3000:]
            run.wait_sender_gone(timeout_s=30)
        finally:
            run.stop()
        stats, log = run.stats, run.log()
        reason = "unpersisted_no_space"
        assert stats[reason] > 0 and stats["undelivered"] > 0, (how, stats)
        error = "No space left on device" if mounted else "File too large"
        where = sandbox.dead_letter_path if spool_dir == "off" else sandbox.spool_dirs()[0]
        disk_lines = [line for line in log.splitlines() if str(where) in line and error in line]
        assert len(disk_lines) == 1, (how, log[-3000:])
        assert "Traceback" not in log
        before = account(run.produced(), {}, [sandbox.dead_letter_path], sandbox.spool_dirs())
        assert before.lost > 0  # what is not in the dead letters is in shared memory
        if mounted:
            subprocess.run(["mount", "-o", "remount,size=64m", str(sandbox.state)], check=True)
        server.up()
        replayed = sandbox.replay(server.url)  # the ring set, then the dead letters
        assert replayed.returncode == 0, (how, replayed.stderr)
        after = account(run.produced(), server.snapshot(), [sandbox.dead_letter_path],
                        sandbox.spool_dirs())
    assert (after.delivered, after.lost) == (after.produced, 0), (how, after.lost_ids[:5])


def test_an_unwritable_dead_letter_path_is_named_once_and_nothing_is_lost(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    dead = blocker / "engine" / "dead_letters.jsonl"  # mkdir: ENOTDIR, for root too
    sandbox = Sandbox(tmp_path)
    settings = dict(_SETTINGS, dead_letter_path=str(dead), spool_dir="off")
    with FaultServer() as server:
        server.down()
        run = Pipeline(sandbox, server.url, producers=1, calls=500, settings=settings).start()
        try:
            assert run.wait(timeout_s=30) == 0, run.log()[-3000:]
            run.wait_sender_gone(timeout_s=30)
        finally:
            run.stop()
        assert run.stats["unpersisted_unwritable"] > 0, run.stats
        lines = [line for line in run.log().splitlines()
                 if str(dead) in line and "Not a directory" in line]
        assert len(lines) == 1, run.log()[-3000:]
        server.up()
        nxt = Pipeline(sandbox, server.url, producers=0, calls=10, settings=settings,
                       name="next").start()
        try:
            assert nxt.wait(timeout_s=30) == 0
        finally:
            nxt.stop()
        assert server.wait_for(
            lambda: account(run.produced(), server.snapshot()).lost == 0, timeout_s=30), \
            nxt.log()[-3000:]


def test_replay_that_cannot_write_back_what_failed_exits_non_zero_and_keeps_it(tmp_path):
    """Replay claims the file, the server is down, and appending the letters back fails
    (a file-size limit on the replay process: EFBIG, as a full disk gives ENOSPC)."""
    from engine.sender._deadletter import DeadLetters, read_dead_letters

    sandbox = Sandbox(tmp_path)
    with DeadLetters(sandbox.dead_letter_path) as letters:
        for i in range(200):
            letters.add(reason="deadline", status=None, call_id=str(i),
                        route="/v2/e/p/calls/complete", project="e/p",
                        item_json=b'{"project_id":"e/p","id":"%d","inputs":{}}' % i)
    size_bytes = sandbox.dead_letter_path.stat().st_size

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size_bytes // 2, size_bytes // 2))

    with FaultServer() as server:
        server.down()
        replayed = subprocess.run(
            [sys.executable, "-m", "engine", "replay", "--to", server.url], env=sandbox.env(),
            capture_output=True, text=True, timeout=60, preexec_fn=limit_file_size)
    assert replayed.returncode == 1, replayed.stderr
    assert "File too large" in replayed.stderr
    claimed = list(sandbox.dead_letter_path.parent.glob("*.claimed-*"))
    assert len(claimed) == 1  # everything is still there, for the next replay
    assert len(list(read_dead_letters(claimed[0]))) == 200
