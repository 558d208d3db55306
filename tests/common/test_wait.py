"""wait_exit: Popen.wait(timeout) woken by the child's exit (a pidfd), same answers."""

import os
import subprocess
import sys
import time

import pytest

from engine.common import _wait
from engine.common._wait import wait_exit

_EXITS_ON_EOF = "import sys; sys.stdin.read(); sys.exit(3)"


def _child() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _EXITS_ON_EOF], stdin=subprocess.PIPE)


def _zombie(proc: subprocess.Popen) -> bool:
    with open(f"/proc/{proc.pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] == "Z"


@pytest.fixture(params=["pidfd", "no pidfd"])
def mode(request, monkeypatch):
    if request.param == "no pidfd":  # an old kernel or a seccomp filter refuses it
        def refused(pid, flags=0):
            raise OSError(38, "Function not implemented")
        monkeypatch.setattr(_wait.os, "pidfd_open", refused)
    return request.param


def test_a_live_child_times_out_then_its_exit_code_is_returned(mode):
    proc = _child()
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            wait_exit(proc, 0.05)
        assert proc.returncode is None
        proc.stdin.close()
        assert wait_exit(proc, 30) == 3
        assert proc.returncode == 3
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()


def test_a_child_that_exited_before_the_wait_is_reaped(mode):
    proc = _child()
    proc.stdin.close()
    deadline = time.monotonic() + 30
    while not _zombie(proc) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _zombie(proc)
    assert wait_exit(proc, 0) == 3
    assert not os.path.exists(f"/proc/{proc.pid}/stat") or not _zombie(proc)
    assert wait_exit(proc, 0) == 3  # reaped already: the code it had


def test_a_killed_child_gives_the_negative_signal():
    proc = _child()
    proc.kill()
    assert wait_exit(proc, 30) == -9
    proc.stdin.close()
