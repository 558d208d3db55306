"""Crash recovery: what a SIGKILLed pipeline left in shared memory is delivered later, by
the next Engine with the same settings or by ``engine replay``, never deleted unread."""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import signal
import tempfile

import msgspec
import pytest

from engine.ring import _files as ring_files
from tests.faultserver import FaultServer
from tests.pipeline import Pipeline, Sandbox, account, poll_until, wait_gone
from tests.ring_leaks import LeftRingSet, ring_names

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_SETTINGS = {"shutdown_timeout_s": 3.0, "ring_bytes": 1 << 20, "max_slots": 8}


@pytest.fixture
def foreign_orphans_parked(request):
    """``park(*urls)``, called once the test's servers run: ring sets that engines which died
    before the test left for one of ``urls`` (a crashed earlier run's server had the port
    one of the test's has now) would be recovered by the test's engines too, adopted into
    their TMPDIR, and counted. Their segment and settings copy are renamed out of the
    engines' sight for the test (in place: a relay's segment is a sparse 128 GiB file,
    which a move to another file system would copy) and put back after it. Nothing else is
    touched: ring sets this worker made (``tests.ring_leaks``'s attribution), and those of
    other engines -- another xdist worker's or pytest run's, mid-test, are for servers of
    their own, on ports that are not the test's while they run. (Before, every dead ring
    set on the machine was parked: another worker's test lost sight of the orphan it was
    about to recover.)"""
    roots = request.config.pluginmanager.get_plugin("ring-leaks").roots()
    moved = []

    def park(*urls: str) -> None:
        for name in sorted(ring_names()):
            left = LeftRingSet.find(name)
            if (left.config.get("url") not in urls or ring_files.is_alive(*left.owner)
                    or left.belongs_to(os.getpid(), roots)):
                continue
            for source in (ring_files.segment_path(name), ring_files.sidecar_path(name)):
                parked = os.path.join(ring_files.SEGMENT_DIR, "parked-" + os.path.basename(source))
                with contextlib.suppress(FileNotFoundError):  # another engine's scan took it
                    os.rename(source, parked)
                    moved.append((parked, source))

    try:
        yield park
    finally:
        for parked, source in moved:
            os.rename(parked, source)


def _segment(run: Pipeline) -> str:
    return ring_files.segment_path(run.info["ring"])


def _sidecar(run: Pipeline) -> str:
    return ring_files.sidecar_path(run.info["ring"])


def _killed_with_its_sender(sandbox: Sandbox, server: FaultServer) -> Pipeline:
    """SIGKILL of the group and of the sender together (the OOM killer, a cgroup kill)
    while the sender is behind: the ring set still holds records nobody reads."""
    run = Pipeline(sandbox, server.url, producers=2, settings=dict(_SETTINGS)).start()
    try:
        server.stall_s = 5.0  # nothing is acknowledged: everything stays in the rings
        run.wait_calls(3000)
        os.kill(run.info["sender"], signal.SIGKILL)
        run.killpg(signal.SIGKILL)
        assert run.wait(timeout_s=30) == -signal.SIGKILL
        wait_gone([run.info["sender"]], 30)
    finally:
        run.stop()
        server.stall_s = 0.0
    return run


def test_a_group_sigkill_alone_loses_nothing_the_sender_drains_on_its_own(tmp_path):
    with FaultServer() as server:
        run = Pipeline(Sandbox(tmp_path), server.url, producers=2, settings=dict(_SETTINGS))
        run.start()
        try:
            run.wait_calls(3000)
            run.killpg(signal.SIGKILL)  # the sender has a session of its own
            assert run.wait(timeout_s=30) == -signal.SIGKILL
            run.wait_sender_gone(timeout_s=30)
        finally:
            run.stop()
        result = account(run.produced(), server.snapshot())
    assert (result.delivered, result.lost) == (result.produced, 0), result.lost_ids[:5]
    assert not os.path.exists(_segment(run))


def test_the_next_engine_recovers_what_a_killed_pipeline_left_in_shared_memory(tmp_path):
    sandbox = Sandbox(tmp_path)
    with FaultServer() as server:
        killed = _killed_with_its_sender(sandbox, server)
        assert os.path.exists(_segment(killed))
        left = account(killed.produced(), server.snapshot())
        assert left.delivered < left.produced  # the rest is only in shared memory
        # the next run with the same settings recovers it, alongside its own calls
        nxt = Pipeline(sandbox, server.url, producers=0, calls=50, name="next",
                       settings=dict(_SETTINGS)).start()
        try:
            assert nxt.wait(timeout_s=30) == 0
        finally:
            nxt.stop()
        assert nxt.stats["orphans_adopted"] == 1
        assert poll_until(lambda: not os.path.exists(_segment(killed)), timeout_s=30)
        result = account(killed.produced() + nxt.produced(), server.snapshot())
    assert (result.delivered, result.lost) == (result.produced, 0), result.lost_ids[:5]


def test_engine_replay_recovers_what_a_killed_pipeline_left_in_shared_memory(tmp_path):
    sandbox = Sandbox(tmp_path)
    with FaultServer() as server:
        killed = _killed_with_its_sender(sandbox, server)
        replayed = sandbox.replay(server.url)
        assert replayed.returncode == 0, replayed.stderr
        assert "1 ring set" in replayed.stdout, replayed.stdout
        assert not os.path.exists(_segment(killed))
        result = account(killed.produced(), server.snapshot())
    assert (result.delivered, result.lost) == (result.produced, 0), result.lost_ids[:5]


def test_a_ring_set_of_an_engine_for_another_server_is_left_for_that_server(tmp_path):
    sandbox = Sandbox(tmp_path)
    with FaultServer() as server, FaultServer() as other:
        killed = _killed_with_its_sender(sandbox, server)
        replayed = sandbox.replay(other.url)
        assert replayed.returncode == 0, replayed.stderr
        assert not other.snapshot() and os.path.exists(_segment(killed))
        assert server.url in replayed.stdout  # named, so the user knows where to send it
        replayed = sandbox.replay(server.url)
        assert replayed.returncode == 0, replayed.stderr
        result = account(killed.produced(), server.snapshot())
    assert (result.delivered, result.lost) == (result.produced, 0)


def test_a_ring_set_whose_temp_folder_was_removed_is_recovered_by_the_next_engine(
        tmp_path, foreign_orphans_parked):
    """A job scheduler removes a job's TMPDIR at its end (a tmp cleaner does the same): the
    segment in /dev/shm still holds the records, and the settings kept beside it let the
    next engine, under another TMPDIR, recover them."""
    job1 = Sandbox(tmp_path / "job1")
    with FaultServer() as server:
        foreign_orphans_parked(server.url)
        killed = _killed_with_its_sender(job1, server)
        assert (job1.tmp / killed.info["ring"]).is_dir() and os.path.exists(_sidecar(killed))
        shutil.rmtree(job1.tmp)  # the job's TMPDIR, removed at its end
        left = account(killed.produced(), server.snapshot())
        assert left.delivered < left.produced
        nxt = Pipeline(Sandbox(tmp_path / "job2"), server.url, producers=0, calls=50,
                       name="next", settings=dict(_SETTINGS)).start()
        try:
            assert nxt.wait(timeout_s=30) == 0
        finally:
            nxt.stop()
        assert nxt.stats["orphans_adopted"] == 1
        assert poll_until(lambda: not os.path.exists(_segment(killed))
                          and not os.path.exists(_sidecar(killed)), timeout_s=30)
        result = account(killed.produced() + nxt.produced(), server.snapshot())
    assert (result.delivered, result.lost) == (result.produced, 0), result.lost_ids[:5]
    assert not list((tmp_path / "job2" / "tmp").iterdir())  # nothing left behind there


def test_a_segment_whose_folder_was_removed_under_a_live_process_is_left_to_it(
        tmp_path, foreign_orphans_parked):
    """Removing the folder does not make a ring set an orphan while a process still maps
    its segment (a sender draining, a producer): the recovery waits until none does."""
    job1, job2 = Sandbox(tmp_path / "job1"), Sandbox(tmp_path / "job2")
    with FaultServer() as server:
        foreign_orphans_parked(server.url)
        killed = _killed_with_its_sender(job1, server)
        shutil.rmtree(job1.tmp)
        with open(_segment(killed), "r+b") as segment:
            mapping = mmap.mmap(segment.fileno(), 0)  # this test process: a live reader
        try:
            replayed = job2.replay(server.url)
            assert replayed.returncode == 0, replayed.stderr
            assert os.path.exists(_segment(killed)) and not list(job2.tmp.iterdir())
            assert account(killed.produced(), server.snapshot()).delivered < len(killed.produced())
        finally:
            mapping.close()
        replayed = job2.replay(server.url)
        assert replayed.returncode == 0, replayed.stderr
        assert "1 ring set" in replayed.stdout, replayed.stdout
        assert not os.path.exists(_segment(killed)) and not os.path.exists(_sidecar(killed))
        result = account(killed.produced(), server.snapshot())
    assert (result.delivered, result.lost) == (result.produced, 0), result.lost_ids[:5]


def test_what_a_recovered_ring_set_cannot_deliver_goes_to_its_own_engines_dead_letters(
        tmp_path):
    """A ring set recovered by ``engine replay`` run under another $HOME and
    $XDG_STATE_HOME, with the server down: its calls are persisted where the dead engine
    persisted (its default spool, or dead letters, under its own state folder), not into
    the replaying user's. Before, the recovering sender resolved the default file in its
    own environment: the replay claimed and counted another engine's calls as its own (a
    2-worker full run: "5669 items delivered" by a replay of 2,000 letters, after it adopted
    the segment of another test's killed engine)."""
    import subprocess
    import sys

    job = Sandbox(tmp_path / "job")
    elsewhere = Sandbox(tmp_path / "elsewhere")  # only its HOME and state folder are used
    with FaultServer() as server:
        killed = _killed_with_its_sender(job, server)
        server.down()
        replayed = subprocess.run(
            [sys.executable, "-m", "engine", "replay", "--to", server.url],
            env=job.env(HOME=str(elsewhere.home), XDG_STATE_HOME=str(elsewhere.state)),
            capture_output=True, text=True, timeout=60, cwd=str(elsewhere.root))
        assert "1 ring set" in replayed.stdout, replayed.stdout + replayed.stderr
        assert "0 items delivered" in replayed.stdout, replayed.stdout
        assert not elsewhere.dead_letter_path.exists() and not elsewhere.spool_dirs()
        assert not os.path.exists(_segment(killed))
        result = account(killed.produced(), server.snapshot(), [job.dead_letter_path],
                         job.spool_dirs())
    assert result.persisted > 0
    assert (result.delivered + result.persisted, result.lost) == (result.produced, 0)


def test_a_scan_for_another_server_leaves_a_bare_segment_to_the_engine_for_its_own(
        tmp_path, foreign_orphans_parked):
    """Only a scan for the URL a bare segment's engine delivered to gives it a new folder
    (and recovers it). Before, any scan did (an engine or replay for another server, a
    ``RingSet.create`` anywhere on the machine): the folder it made in its own TMPDIR stayed
    there once the engine for the right server, under yet another TMPDIR, had made one of its
    own and recovered the segment (seen by the suite's check for ring sets left behind: the
    segment of ``test_a_ring_set_whose_temp_folder_was_removed_is_recovered_by_the_next_engine``
    was adopted into /tmp by an engine running beside the suite, for another server)."""
    job1, elsewhere = Sandbox(tmp_path / "job1"), Sandbox(tmp_path / "elsewhere")
    with FaultServer() as server, FaultServer() as other:
        foreign_orphans_parked(server.url, other.url)
        killed = _killed_with_its_sender(job1, server)
        shutil.rmtree(job1.tmp)
        replayed = elsewhere.replay(other.url)
        assert replayed.returncode == 0, replayed.stderr
        assert server.url in replayed.stdout, replayed.stdout  # still named, for its server
        assert not list(elsewhere.tmp.iterdir())  # and left where it is
        replayed = Sandbox(tmp_path / "job2").replay(server.url)
        assert "1 ring set" in replayed.stdout, replayed.stdout + replayed.stderr
        result = account(killed.produced(), server.snapshot())
    assert (result.delivered, result.lost) == (result.produced, 0), result.lost_ids[:5]
    assert not os.path.exists(_segment(killed)) and not os.path.exists(_sidecar(killed))


def test_a_bare_segment_a_live_process_works_on_is_neither_listed_nor_adopted_until_it_dies(
        tmp_path, monkeypatch, foreign_orphans_parked):
    """A job's TMPDIR removed under a live engine, then under its sender alone (the owner's
    group SIGKILLed; the sender drains on, the server unanswering): no scan, for its URL or
    another, lists the segment as an orphan or adopts it. Before, once the owner was gone,
    a scan for another server listed it and a scan for its own adopted it (a folder made in
    the scan's TMPDIR) while its sender was at work on it: one still starting had mapped
    nothing yet, but holds its reader lock. SIGKILLed with its sender, it is recovered."""
    from engine.ring._orphans import find_orphans

    job1, job2 = Sandbox(tmp_path / "job1"), Sandbox(tmp_path / "job2")
    monkeypatch.setattr(tempfile, "tempdir", str(job2.tmp))  # scans run from job2's TMPDIR
    settings = {**_SETTINGS, "shutdown_timeout_s": 30.0}  # its sender drains on, unanswered
    with FaultServer(stall_s=60.0) as server, FaultServer() as other:
        foreign_orphans_parked(server.url, other.url)
        run = Pipeline(job1, server.url, producers=1, settings=settings).start()
        try:
            run.wait_calls(1000)
            shutil.rmtree(job1.tmp / run.info["ring"])

            def unseen() -> bool:
                listed = find_orphans(other.url) + find_orphans(server.url)
                return (not any(o.name == run.info["ring"] for o in listed)
                        and not list(job2.tmp.iterdir()) and os.path.exists(_segment(run)))

            assert unseen()  # the engine lives
            run.killpg(signal.SIGKILL)
            assert run.wait(timeout_s=30) == -signal.SIGKILL
            assert ring_files.process_start_ticks(run.info["sender"]) is not None
            assert unseen()  # its sender lives
            os.kill(run.info["sender"], signal.SIGKILL)
            wait_gone([run.info["sender"]], 30)
            assert [o.url for o in find_orphans(other.url) if o.name == run.info["ring"]] == [
                server.url]  # now an orphan, named for its own server
        finally:
            run.stop()
        server.stall_s = 0.0
        replayed = job2.replay(server.url)
        assert "1 ring set" in replayed.stdout, replayed.stdout + replayed.stderr
        result = account(run.produced(), server.snapshot())
    assert (result.delivered, result.lost) == (result.produced, 0), result.lost_ids[:5]
    assert not os.path.exists(_segment(run)) and not os.path.exists(_sidecar(run))


_EARLIER_RUNS_URL = "http://127.0.0.1:9"  # a crashed earlier run's server had the test's port
_OTHER_WORKERS_URL = "http://127.0.0.1:7"  # another worker's server, mid-test


def _dead_ring_set(tmp_path, url: str) -> str:
    """The segment and settings copy in /dev/shm of a ring set whose owner (a child that
    ran, here) is gone and whose folder is too; not this worker's."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    owner = f"{child.pid}-{ring_files.process_start_ticks(child.pid)}"
    child.communicate()
    name = f"{ring_files.NAME_PREFIX}{owner}-{os.urandom(4).hex()}"
    settings = {"spec": {}, "ring_dir": f"/nonexistent/{name}", "config": {"url": url}}
    with open(ring_files.segment_path(name), "xb"):  # no ring header: no scan takes it
        pass
    with open(ring_files.sidecar_path(name), "xb") as sidecar:
        sidecar.write(msgspec.json.encode(settings))
    return name


@pytest.fixture
def ring_sets_of_other_runs(tmp_path):
    """(an earlier run's dead ring set for the test's server, another worker's): made before
    ``foreign_orphans_parked`` parks anything, checked in place and removed after it put
    back what it parked."""
    names = [_dead_ring_set(tmp_path, url) for url in (_EARLIER_RUNS_URL, _OTHER_WORKERS_URL)]
    try:
        yield names
        for name in names:  # the parked one is back
            assert os.path.exists(ring_files.segment_path(name)), name
            assert os.path.exists(ring_files.sidecar_path(name)), name
    finally:
        for name in names:
            for path in (ring_files.segment_path(name), ring_files.sidecar_path(name)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)


def test_parking_foreign_orphans_touches_only_those_for_the_tests_servers(
        ring_sets_of_other_runs, foreign_orphans_parked):
    """Before, the fixture renamed every dead ring set on the machine as the test began:
    another xdist worker's killed engine, which its test was about to recover, too."""
    earlier_runs, other_workers = ring_sets_of_other_runs
    assert os.path.exists(ring_files.segment_path(other_workers))
    foreign_orphans_parked(_EARLIER_RUNS_URL)
    assert not os.path.exists(ring_files.segment_path(earlier_runs))
    assert not os.path.exists(ring_files.sidecar_path(earlier_runs))
    assert os.path.exists(ring_files.segment_path(other_workers))
    assert os.path.exists(ring_files.sidecar_path(other_workers))
