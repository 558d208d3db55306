"""``tests.stuck``: what a timed-out test's leftover children were doing, read from /proc."""

import os
import signal
import subprocess
import sys
import time

from tests.stuck import descendants, describe_descendants, kill_started_since


def test_a_child_that_holds_sigterm_back_is_named_with_its_mask_and_its_wait():
    code = ("import signal, sys, time; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM});"
            " print('blocked', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"blocked\n"
        assert child.pid in descendants(os.getpid())
        text = describe_descendants()
        line = next(line for line in text.splitlines() if line.startswith(f"pid {child.pid} "))
        assert "time.sleep(60)" in line
        status = text.split(line, 1)[1].splitlines()[1]
        blocked = int(status.split("SigBlk ")[1].split()[0], 16)
        assert blocked & (1 << (signal.SIGTERM - 1))
        assert f"thread {child.pid} python" in text and "waiting in" in text
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    assert f"pid {child.pid} " not in describe_descendants()


def test_a_timed_out_test_s_children_are_killed_and_older_ones_kept():
    """What a timed-out test started dies with it (a hung program's Pool workers and sender
    lived on for 86 minutes after one); a process started before the test (a module's
    server) is not touched."""
    older = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    time.sleep(0.2)
    started = time.time()
    code = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(60)']); print('grandchild', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"grandchild\n"
        grandchild = next(pid for pid in descendants(child.pid))
        killed = kill_started_since(started)
        assert sorted(killed) == sorted([child.pid, grandchild])
        assert child.wait(timeout=10) == -signal.SIGKILL
        assert older.poll() is None  # started before: kept
        assert grandchild not in descendants(os.getpid())
    finally:
        for proc in (older, child):
            proc.kill()
            proc.wait()
        child.stdout.close()
