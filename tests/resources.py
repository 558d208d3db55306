"""What a process holds, read from ``/proc``: for the tests of resource churn (engines opened
and closed, threads and pool workers started and ended, connections made and dropped), which
assert that these counts stop growing after a warm-up.

:func:`held` counts, for this process or another (``pid``): open fds (sockets apart), threads, child
processes (zombies included: a child not waited for is one), mappings of ring-set segments
(``engine-rings-*``, in /dev/shm or on disk: a removed segment's memory is freed only once
no process maps it), and the entries in /dev/shm and the temp dir of the ring sets it made.
"""

from __future__ import annotations

import glob
import os
import tempfile

from engine.ring import _files as ring_files


def held(pid: int | str = "self", sockets: bool = True) -> dict[str, int]:
    """``sockets=False``: not the sockets (a test whose loopback server runs in this process
    sees its connections come and go; the engine's producers open none)."""
    fds = [_target(pid, fd) for fd in os.listdir(f"/proc/{pid}/fd")]
    counts = {"fds": sum(not t.startswith("socket:") for t in fds)}
    if sockets:
        counts["sockets"] = len(fds) - counts["fds"]
    return {
        **counts,
        "threads": len(os.listdir(f"/proc/{pid}/task")),
        "children": len(children(pid)),
        "ring_mappings": ring_mappings(pid),
        "ring_files": ring_files_count(os.getpid() if pid == "self" else int(pid)),
    }


def _target(pid: int | str, fd: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:  # closed meanwhile
        return ""


def children(pid: int | str = "self") -> list[int]:
    """Child processes of ``pid`` (every thread's), zombies included."""
    kids: list[int] = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(path) as f:
                kids += [int(k) for k in f.read().split()]
        except FileNotFoundError:  # a thread that ended meanwhile (the pool's handlers)
            pass
    return kids


def ring_mappings(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/maps") as f:
        return sum(ring_files.NAME_PREFIX in line for line in f)


def ring_files_count(owner_pid: int) -> int:
    """Entries in /dev/shm (segments, sidecars) and the temp dir (private dirs) of the ring
    sets ``owner_pid`` made (their names start with its pid; other processes' are not
    counted: tests run beside each other)."""
    prefix = f"{ring_files.NAME_PREFIX}{owner_pid}-"
    return sum(name.startswith(prefix)
               for where in {ring_files.SEGMENT_DIR, tempfile.gettempdir()}
               for name in os.listdir(where))


def rss_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def grown(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The counts that grew, by how much (empty: nothing grew)."""
    return {k: after[k] - before[k] for k in before if after[k] > before[k]}
