"""Any number of engines with default settings plus ``engine replay``, at the same time, on
one machine: no call lost, none doubled. (Measured before the claim protocol: 28,400 of
33,950 calls lost replaying the default dead-letter file while an engine wrote it.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import msgspec
import pytest

from tests.faultserver import FaultServer
from tests.pipeline import Pipeline, Sandbox, account

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_two_engines_and_replays_meanwhile_on_the_default_paths_lose_and_double_nothing(
        tmp_path):
    sandbox = Sandbox(tmp_path)  # both engines and every replay share its default paths
    with FaultServer() as unreachable, FaultServer() as server:
        unreachable.down()  # the engines' server: every batch is dead-lettered at its deadline
        # the dead letters: their default spool is per server, and the replays go elsewhere
        settings = {"delivery_deadline_s": 0.2, "shutdown_timeout_s": 1.0, "linger_ms": 5,
                    "backoff_initial_ms": 20, "backoff_max_ms": 50, "spool_dir": "off"}
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
    claimed copies (two names of one file count once), as the next replay takes them: a
    claimed file that was being merged into the path (``.merging-…-<size>``) holds its
    first ``size`` bytes."""
    from engine.sender._deadletter import claimed_files

    merging = [str(p) for p in path.parent.glob(f"{path.name}.merging-*")]
    files = {}
    for name in [str(path)] * path.exists() + claimed_files(path) + merging:
        stat = os.stat(name)
        with open(name, "rb") as file:
            data = file.read(int(name.rsplit("-", 1)[1]) if name in merging else -1)
        letters = [msgspec.json.decode(line)["call_id"] for line in data.splitlines() if line]
        files[(stat.st_dev, stat.st_ino)] = letters
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


# Runs ``engine replay`` with signals (argv[2]: SIGTERM, SIGINT+SIGINT...) sent to itself at
# the moment its claimed file goes (after handing back what failed: deleted, or renamed
# over the dead-letter file); with argv[3] 1, an engine adds a letter to a new dead-letter
# file right after the claim (the hand-back then takes it in).
_SIGNAL_AT_DELETE = """
import os, runpy, signal, sys
from engine.sender._deadletter import DeadLetters
path, engine_wrote = sys.argv[1], sys.argv[3] == "1"
signals = [getattr(signal, name) for name in sys.argv[2].split("+")]
real_unlink, real_rename = os.unlink, os.rename
def claim_goes():
    os.unlink, os.rename = real_unlink, real_rename
    for signum in signals:
        os.kill(os.getpid(), signum)
def unlink(name, *args, **kwargs):
    if ".claimed-" in os.fspath(name):
        claim_goes()
    return real_unlink(name, *args, **kwargs)
def rename(src, dst, *args, **kwargs):
    global engine_wrote
    if os.fspath(dst) == path and any(m in os.fspath(src) for m in (".claimed-", ".merging-")):
        claim_goes()
    real_rename(src, dst, *args, **kwargs)
    if engine_wrote and os.fspath(src) == path:
        engine_wrote = False
        with DeadLetters(path) as letters:
            letters.add(reason="deadline", status=None, call_id="engine-wrote", route="/v2/e/p/calls/complete",
                        project="e/p", item_json=b'{"project_id":"e/p","id":"engine-wrote","inputs":{}}')
os.unlink, os.rename = unlink, rename
sys.argv = ["engine", *sys.argv[4:]]
runpy.run_module("engine", run_name="__main__")
"""


@pytest.mark.parametrize(("signum", "engine_wrote"), [
    ("SIGTERM", False), ("SIGTERM", True), ("SIGINT+SIGINT", False), ("SIGINT+SIGINT", True),
    ("SIGKILL", False), ("SIGKILL", True)])
def test_a_replay_stopped_as_it_settles_its_claim_leaves_each_letter_in_one_file(
        tmp_path, signum, engine_wrote):
    """200 letters, the server refuses 10 of them: the replay writes those 10 back and
    deletes its claimed file, and is signalled just before the deletion. Each letter not
    delivered is then in one file, once; the next replay delivers just those 10. Before:
    a SIGKILL there, a second Ctrl-C there, or (until SIGTERM cancelled the replay instead
    of raising) a SIGTERM left the 10 in the dead-letter file and all 200 in the claimed
    one: the next replay delivered 210 (5 of 8 SIGTERMs sent as the write-back began left
    4,000 letters for 2,000). Until the hand-back became one rename, a SIGKILL there after
    an engine had started a new file left the 10 in it and in the claimed file: the next
    replay sent them twice (21 items delivered for 11)."""
    sandbox = Sandbox(tmp_path)
    ids = [f"0190a0b0-0000-7000-8000-{i:012d}" for i in range(200)]
    _write_letters(sandbox.dead_letter_path, ids)
    refused = set(ids[::20])
    with FaultServer(reject_ids=refused) as server:
        first = subprocess.run(
            [sys.executable, "-c", _SIGNAL_AT_DELETE, str(sandbox.dead_letter_path), signum,
             "1" if engine_wrote else "0", "replay", "--to", server.url],
            env=sandbox.env(), cwd=str(sandbox.root), capture_output=True, text=True,
            timeout=60)
        expected = {"SIGKILL": -signal.SIGKILL, "SIGTERM": 143, "SIGINT+SIGINT": 130}[signum]
        assert first.returncode == expected, first.stderr
        if signum != "SIGKILL":
            assert "engine replay: stopped before the end" in first.stderr, first.stderr
            assert "Traceback" not in first.stderr, first.stderr
        assert server.stored_ids("e/p") == set(ids) - refused
        left = sorted(refused | ({"engine-wrote"} if engine_wrote else set()))
        assert sorted(i for f in _letters_by_file(sandbox.dead_letter_path).values()
                      for i in f) == left
        server.reject_ids = frozenset()
        again = sandbox.replay(server.url)
        assert again.returncode == 0, again.stderr
        assert f"{len(left)} items delivered" in again.stdout, again.stdout
        assert server.stored_ids("e/p") == set(ids) | set(left)
        assert server.duplicate_deliveries() == 0
    assert not list(sandbox.dead_letter_path.parent.glob("*.claimed-*"))
    assert not list(sandbox.dead_letter_path.parent.glob("*.merging-*"))
    assert not sandbox.dead_letter_path.exists()


# Runs ``engine replay --spool DIR`` whose server takes the first ``argv[2]`` requests and
# then stops answering, SIGKILLed the moment a spool segment is renamed into place.
_KILLED_AS_THE_REST_IS_SPOOLED = """
import os, runpy, signal, sys
from engine.common._errors import SendError
from engine.sender._transport import Transport
answered, real_post, real_rename = int(sys.argv[1]), Transport.post, os.rename
async def post(self, *args, **kwargs):
    global answered
    if answered <= 0:
        raise SendError("the server stopped answering", retriable=True)
    answered -= 1
    return await real_post(self, *args, **kwargs)
def rename(src, dst, *args, **kwargs):
    real_rename(src, dst, *args, **kwargs)
    if os.fspath(dst).endswith(".seg"):
        os.kill(os.getpid(), signal.SIGKILL)
Transport.post, os.rename = post, rename
sys.argv = ["engine", *sys.argv[2:]]
runpy.run_module("engine", run_name="__main__")
"""


def test_a_spool_replay_killed_as_it_keeps_the_rest_of_a_segment_leaves_each_item_once(
        tmp_path):
    """A segment of 200 calls (about 300 KB) meets a 100 KB limit: the replay cuts it, two
    pieces are acknowledged, then the server stops answering and the rest is kept. Killed
    as the rest is written, the spool holds each call not acknowledged once. Before: the
    rest went to a new segment and the old one was deleted after, so a kill between the
    two left the rest in both and the acknowledged ones in the old one; the next replay
    sent 200 + the rest."""
    from engine.sender._resend import make_body, split_body
    from engine.sender._spool import Spool

    sandbox = Sandbox(tmp_path)
    spool_dir = tmp_path / "spool"
    route = "/v2/e/p/calls/complete"
    ids = [f"0190a0b0-0000-7000-8000-{i:012d}" for i in range(200)]
    items = [b'{"project_id":"e/p","id":"%s","inputs":{"q":"%s"}}' % (i.encode(), b"x" * 1500)
             for i in ids]
    Spool(spool_dir).put(route, make_body(route, items), len(items))
    # plain bodies: the limit is on what the items weigh (zstd would shrink these far below it)
    with FaultServer(limit_bytes=100_000, accepts_encodings=()) as server:  # the 413 first
        first = subprocess.run(
            [sys.executable, "-c", _KILLED_AS_THE_REST_IS_SPOOLED, "3", "replay", "--to",
             server.url, "--spool", str(spool_dir)],
            env=sandbox.env(), cwd=str(sandbox.root), capture_output=True, text=True,
            timeout=60)
        assert first.returncode == -signal.SIGKILL, first.stderr
        delivered = server.stored_ids("e/p")
        assert 0 < len(delivered) < len(ids)
        spool = Spool(spool_dir)
        left = [msgspec.json.decode(item)["id"] for entry in spool.pending()
                for item in split_body(*spool.load(entry))]
        assert sorted(left) == sorted(set(ids) - delivered)  # each once, in one segment
        again = sandbox.replay(server.url, "--spool", str(spool_dir))
        assert again.returncode == 0, again.stderr
        assert f"{len(left)} items delivered" in again.stdout, again.stdout
        assert server.stored_ids("e/p") == set(ids)
    assert not Spool(spool_dir).pending()


# Runs ``engine replay --spool DIR``, SIGKILLed the moment it has dead-lettered the items the
# server refused (before it is done with their segment).
_KILLED_AFTER_DEAD_LETTERING = """
import os, runpy, signal, sys
from engine.sender._deadletter import DeadLetters
real_add_batch = DeadLetters.add_batch
def add_batch(self, *args, **kwargs):
    real_add_batch(self, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
DeadLetters.add_batch = add_batch
sys.argv = ["engine", *sys.argv[1:]]
runpy.run_module("engine", run_name="__main__")
"""


def test_a_spool_replay_killed_as_it_dead_letters_refused_items_sends_no_item_twice(tmp_path):
    """A segment of 200 calls, 10 of which the server refuses: the replay is killed right
    after dead-lettering those 10. The next replay sends none of the 190 acknowledged again,
    sends the 10 again and says they may now be in the dead letters twice. Before: the
    segment was still whole, and the next replay sent all 200 again (190 duplicates)."""
    from engine.sender._deadletter import read_dead_letters
    from engine.sender._resend import make_body
    from engine.sender._spool import Spool

    sandbox = Sandbox(tmp_path)
    spool_dir = tmp_path / "spool"
    route = "/v2/e/p/calls/complete"
    ids = [f"0190a0b0-0000-7000-8000-{i:012d}" for i in range(200)]
    items = [b'{"project_id":"e/p","id":"%s","inputs":{}}' % i.encode() for i in ids]
    Spool(spool_dir).put(route, make_body(route, items), len(items))
    refused = set(ids[::20])
    with FaultServer(reject_ids=refused) as server:
        first = subprocess.run(
            [sys.executable, "-c", _KILLED_AFTER_DEAD_LETTERING, "replay", "--to", server.url,
             "--spool", str(spool_dir)],
            env=sandbox.env(), cwd=str(sandbox.root), capture_output=True, text=True,
            timeout=60)
        assert first.returncode == -signal.SIGKILL, first.stderr
        assert server.stored_ids("e/p") == set(ids) - refused
        # killed after its first write (one letter per reason: one here)
        before = [x.call_id for x in read_dead_letters(sandbox.dead_letter_path)]
        assert before and set(before) <= refused
        again = sandbox.replay(server.url, "--spool", str(spool_dir))
        assert again.returncode == 1, again.stderr  # the 10 are refused again
        assert "; 0 items delivered" in again.stdout, again.stdout
        assert "dead-lettered its last 10 items" in again.stderr, again.stderr
        assert server.duplicate_deliveries() == 0
        assert server.stored_ids("e/p") == set(ids) - refused
    assert not Spool(spool_dir).pending()
    letters = [x.call_id for x in read_dead_letters(sandbox.dead_letter_path)]
    assert sorted(letters) == sorted([*before, *refused])  # what the log line warned of
