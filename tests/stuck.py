"""What the processes this test process started were doing when a test timed out.

pytest-timeout prints this process's threads; a test stuck waiting for a child (a
``Pool.terminate()`` whose worker does not die, a ``wait()`` on a sender) says nothing about
the child. ``describe_descendants`` reads each live descendant from ``/proc``: its command,
its state, its signal masks (blocked, ignored, caught: a SIGTERM that cannot land shows
there) and each thread's state and kernel wait channel. ``kill_started_since`` then ends
those the timed-out test started (a hung program's Pool workers and sender lived on for
the rest of the run, and past it); those started before it (a module's server) stay."""

from __future__ import annotations

import contextlib
import os
import signal
import time

_STATUS_KEYS = ("State", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")


def _read(path: str) -> str:
    try:
        with open(path, "rb") as file:
            return file.read().decode(errors="replace")
    except OSError:
        return ""


def _parent_of(pid: int) -> int | None:
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    # pid (comm) state ppid ...: comm may hold spaces and parentheses
    return int(stat[stat.rindex(")") + 2:].split()[1])


def descendants(root: int) -> list[int]:
    """The live descendants of ``root``, parents before children."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            parent = _parent_of(int(name))
            if parent is not None:
                children.setdefault(parent, []).append(int(name))
    found, queue = [], [root]
    while queue:
        for child in sorted(children.get(queue.pop(0), ())):
            found.append(child)
            queue.append(child)
    return found


def describe(pid: int) -> str:
    command = _read(f"/proc/{pid}/cmdline").replace("\0", " ").strip()[:200]
    status = dict(line.split(":", 1) for line in _read(f"/proc/{pid}/status").splitlines()
                  if ":" in line)
    lines = [f"pid {pid} (parent {_parent_of(pid)}): {command or '?'}",
             "  " + "  ".join(f"{key} {status[key].strip()}" for key in _STATUS_KEYS
                              if key in status)]
    with contextlib.suppress(OSError):
        for task in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
            stat = _read(f"/proc/{pid}/task/{task}/stat")
            state = stat[stat.rindex(")") + 2:].split()[0] if stat else "?"
            name = _read(f"/proc/{pid}/task/{task}/comm").strip()
            wchan = _read(f"/proc/{pid}/task/{task}/wchan").strip() or "-"
            lines.append(f"  thread {task} {name}: {state} waiting in {wchan}")
    return "\n".join(lines)


def describe_descendants(root: int | None = None) -> str:
    pids = descendants(os.getpid() if root is None else root)
    return "\n".join(describe(pid) for pid in pids) or "(none)"


def _started_s(pid: int) -> float | None:
    """When ``pid`` started, in seconds of CLOCK_BOOTTIME (``/proc/PID/stat``'s starttime)."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[19]) / os.sysconf("SC_CLK_TCK")


def kill_started_since(epoch_s: float, root: int | None = None) -> list[int]:
    """SIGKILL the live descendants of ``root`` (this process) started at or after
    ``epoch_s`` (``time.time()``, as pytest's ``call.start``); returns their pids."""
    since_s = time.clock_gettime(time.CLOCK_BOOTTIME) - (time.time() - epoch_s)
    pids = [pid for pid in descendants(os.getpid() if root is None else root)
            if (_started_s(pid) or 0.0) >= since_s - 0.02]  # (a clock tick: 10 ms)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids
