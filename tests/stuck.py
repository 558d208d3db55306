"""What the processes this test process started were doing when a test timed out.

pytest-timeout prints this process's threads; a test stuck waiting for a child (a
``Pool.terminate()`` whose worker does not die, a ``wait()`` on a sender) says nothing about
the child. ``describe_descendants`` reads each live descendant from ``/proc``: its command,
its state, its signal masks (blocked, ignored, caught: a SIGTERM that cannot land shows
there) and each thread's state and kernel wait channel."""

from __future__ import annotations

import contextlib
import os

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
