"""Waiting for a child process to exit, woken by its exit rather than by polling.

``subprocess.Popen.wait(timeout)`` polls: it sleeps between looks, the sleeps doubling up
to 50 ms, so a child that exits 1 ms into the wait is seen up to tens of ms later. That
lateness is paid by every ``Engine.close()`` (it waits for its sender) and so by every short
``engine ingest``. On Linux (5.3+) a pidfd becomes readable the moment the child exits;
elsewhere, or where pidfds are refused (old kernels, seccomp), this is ``proc.wait``.
"""

from __future__ import annotations

import os
import select
import subprocess


def wait_exit(proc: subprocess.Popen, timeout_s: float) -> int:
    """``proc.wait(timeout_s)``: its exit code, or ``subprocess.TimeoutExpired``."""
    if proc.returncode is not None:
        return proc.returncode
    try:
        # the child is ours and not reaped (returncode is None): its pid cannot be reused
        # before we reap it, so this pidfd names it even if it already exited
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        return proc.wait(timeout_s)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        exited = poller.poll(max(0, int(timeout_s * 1000 + 0.999)))
    finally:
        os.close(fd)
    if not exited:
        raise subprocess.TimeoutExpired(proc.args, timeout_s)
    return proc.wait()
