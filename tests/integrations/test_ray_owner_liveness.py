"""A worker notices that its node engine died even before the raylet reaps it (a zombie),
and does not take a new process given the same pid for it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from engine.integrations.ray import _nodes
from engine.ring import _files as ring_files


def test_a_killed_node_engine_not_yet_reaped_is_dead_to_its_workers():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = (child.pid, ring_files.process_start_ticks(child.pid))
        assert _nodes.alive(owner)
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _nodes.alive(owner):  # at most 0.1 s of the last look, then /proc says so
            assert time.monotonic() < deadline, "a zombie still counts as the node engine"
            time.sleep(0.02)
        with open(f"/proc/{child.pid}/stat", "rb") as stat:  # not reaped: still a zombie,
            assert b") Z " in stat.read()  # which kill(pid, 0) would have taken as alive
    finally:
        child.kill()
        child.wait()


def test_another_process_with_the_same_pid_is_not_the_node_engine():
    me = os.getpid()
    assert _nodes.alive((me, ring_files.process_start_ticks(me)))
    assert not _nodes.alive((me, ring_files.process_start_ticks(me) + 1))
    assert _nodes.alive(_nodes.NO_OWNER)
