"""The suite's check for ring sets left behind (``tests/ring_leaks.py``), run on a pytest
session of its own: a test that leaves one fails and its ring set is removed; ring sets of
another worker, and those a sender finishes draining in time, fail nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from engine.ring import _files as ring_files

ROOT = Path(__file__).resolve().parent.parent

# A ring set as an engine SIGKILLed with its sender leaves it: one record not released, the
# sender's settings (URL, dead letters) beside the segment. argv: dead letters, mode, seconds.
# "read": a sender process (its own session) holds the reader lock that long, then removes the
# ring set and exits; "bare": its folder is removed and that sender maps the segment instead
# (as one recovering it from a folder made elsewhere does); "attached": no record, a producer
# process keeps a slot that long; "closed": the same, and its sender marked it closed (what a
# sender leaves for pooled workers after its owner's close()).
_LEAVE = r"""
import json, os, shutil, signal, subprocess, sys
import msgspec
from engine.ring import KIND_START, RingSet, mark_closed, write_sender_args

dead_letters, mode, hold_s = sys.argv[1:]
rings = RingSet.create(4096, 2)
if mode not in ("attached", "closed"):
    assert rings.writer().try_write(KIND_START, 0, bytes(16), bytes(16), b"e/p", b"{}", 0)
ring_dir = os.path.dirname(rings.spec.lock_path)
settings = {"spec": msgspec.to_builtins(rings.spec), "ring_dir": ring_dir,
            "config": {"url": "http://127.0.0.1:9/", "dead_letter_path": dead_letters}}
write_sender_args(rings.spec.shm_name, ring_dir, msgspec.json.encode(settings))
if mode:
    other = subprocess.Popen([sys.executable, "-c", os.environ["OTHER"], mode, hold_s,
                              json.dumps(settings["spec"])], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    assert other.stdout.readline() == b"ready\n"
    print(other.pid, end=" ")
if mode == "bare":
    shutil.rmtree(ring_dir)
if mode == "closed":
    mark_closed(ring_dir)
print(rings.spec.shm_name, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
_OTHER = r"""
import json, mmap, os, sys, time
from engine.ring import RingSet, RingSpec, take_reader_lock
from engine.ring import _files

mode, hold_s, spec = sys.argv[1], float(sys.argv[2]), RingSpec(**json.loads(sys.argv[3]))
ring_dir = os.path.dirname(spec.lock_path)
if mode == "bare":
    with open(_files.segment_path(spec.shm_name), "r+b") as segment:
        mapping = mmap.mmap(segment.fileno(), 0)
elif mode == "read":
    assert take_reader_lock(ring_dir) is not None
else:
    writer = RingSet.attach(spec).writer()
print("ready", flush=True)
os.close(1)
time.sleep(hold_s)
if mode in ("read", "bare"):
    _files.remove_ring_files(spec.shm_name, ring_dir)
"""

_CONFTEST = """
from tests.ring_leaks import RingLeakCheck

def pytest_configure(config):
    config.pluginmanager.register(RingLeakCheck(config, wait_s=0.5), "ring-leaks")
"""

_TESTS = """
import os, subprocess, sys

def leave(dead_letters, mode="", hold_s=0.0):
    out = subprocess.run([sys.executable, "-c", os.environ["LEAVE"], str(dead_letters), mode,
                          str(hold_s)], capture_output=True, text=True, timeout=30)
    assert out.returncode == -9, out.stderr
    with open(os.environ["LEFT"], "a") as file:
        file.write(out.stdout)

def test_leaves_one(tmp_path):
    leave(tmp_path / "dead_letters.jsonl")

def test_leaves_one_of_another_worker():
    leave(os.environ["FOREIGN"])

def test_leaves_one_its_sender_removes_in_time(tmp_path):
    leave(tmp_path / "dead_letters.jsonl", "read", 0.1)

def test_leaves_one_whose_sender_never_ends(tmp_path):
    leave(tmp_path / "dead_letters.jsonl", "read", 60)

def test_leaves_a_bare_one_recovered_in_time_from_elsewhere(tmp_path):
    leave(tmp_path / "dead_letters.jsonl", "bare", 0.1)

def test_leaves_an_empty_one_with_a_producer_attached(tmp_path):
    leave(tmp_path / "dead_letters.jsonl", "attached", 60)

def test_leaves_an_empty_one_closed_with_a_producer_attached(tmp_path):
    leave(tmp_path / "dead_letters.jsonl", "closed", 60)

def test_leaves_nothing(tmp_path):
    pass
"""


def _paths(name: str) -> list[str]:
    return [ring_files.segment_path(name), ring_files.sidecar_path(name),
            os.path.join(tempfile.gettempdir(), name)]


def test_a_test_that_leaves_a_ring_set_fails_and_its_ring_set_is_removed(tmp_path):
    session = tmp_path / "session"
    session.mkdir()
    (session / "conftest.py").write_text(_CONFTEST)
    (session / "test_leaving.py").write_text(_TESTS)
    left, foreign = tmp_path / "left.txt", tmp_path / "another-worker" / "dead_letters.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LEAVE": _LEAVE, "OTHER": _OTHER,
           "LEFT": str(left), "FOREIGN": str(foreign),
           "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}  # hypothesis' alone takes 0.8 s to import
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
         f"--basetemp={tmp_path / 'basetemp'}",
         f"--junitxml={tmp_path / 'report.xml'}", "test_leaving.py"],
        cwd=session, env=env, capture_output=True, text=True, timeout=60)
    made = [line.split() for line in left.read_text().splitlines()]
    try:
        assert _outcomes(tmp_path / "report.xml") == {
            "test_leaves_one": "error", "test_leaves_one_of_another_worker": "passed",
            "test_leaves_one_its_sender_removes_in_time": "passed",
            "test_leaves_one_whose_sender_never_ends": "error",
            "test_leaves_a_bare_one_recovered_in_time_from_elsewhere": "passed",
            "test_leaves_an_empty_one_with_a_producer_attached": "error",
            "test_leaves_an_empty_one_closed_with_a_producer_attached": "passed",
            "test_leaves_nothing": "passed",
        }, run.stdout
        (leaked,), (another,), (_, drained), (killed, read), (_, bare), (_, attached), \
            (_, closed) = made
        tmp = tempfile.gettempdir()
        assert (f"{leaked} ({tmp}/{leaked}): records not released: 1, for http://127.0.0.1:9/ "
                f"(dead letters: {tmp_path / 'basetemp'}") in run.stdout, run.stdout
        assert f"{read} ({tmp}/{read}): records not released: 1" in run.stdout
        assert f"its sender {killed} still read it 0.5 s after the test: killed" in run.stdout
        assert ring_files.process_start_ticks(int(killed)) is None
        assert f"{attached} ({tmp}/{attached}): records not released: 0" in run.stdout
        assert closed not in run.stdout  # removed, not said: the engine closed it empty
        assert not any(os.path.exists(p) for name in (leaked, drained, read, bare, attached,
                                                      closed) for p in _paths(name))
        assert os.path.exists(ring_files.segment_path(another))  # not this session's
    finally:
        for fields in made:
            if len(fields) == 2 and ring_files.process_start_ticks(int(fields[0])) is not None:
                os.kill(int(fields[0]), signal.SIGKILL)
            ring_files.remove_ring_files(fields[-1], _paths(fields[-1])[-1])


def _outcomes(report: Path) -> dict[str, str]:
    """Each test's outcome in a JUnit report: passed, failed, error (setup or teardown)."""
    outcomes = {}
    for case in ET.parse(report).iter("testcase"):
        kinds = {child.tag for child in case} & {"failure", "error", "skipped"}
        outcomes[case.get("name")] = ("error" if "error" in kinds else "failed"
                                      if "failure" in kinds else "passed")
    return outcomes


@pytest.mark.parametrize("where", ["dead letters", "ring dir"])
def test_only_ring_sets_naming_this_sessions_folders_are_its_own(tmp_path, where):
    from tests.ring_leaks import LeftRingSet

    inside, outside = str(tmp_path / "x"), "/elsewhere/x"
    for path, mine in ((inside, True), (outside, False)):
        config = {"dead_letter_path": path} if where == "dead letters" else {}
        left = LeftRingSet("engine-rings-1-2-abc", path if where == "ring dir" else "/tmp/r",
                           {"config": config})
        assert left.belongs_to(os.getpid(), [str(tmp_path)]) is mine
    assert LeftRingSet(f"engine-rings-{os.getpid()}-2-abc", "/tmp/r", None).belongs_to(
        os.getpid(), [])  # made by this process
