"""File-system helpers shared by processes that make files durable."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

# the disk, not the setting: an engine starts anyway and says so where it writes
_OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)


def fsync_dir(path: str | Path) -> None:
    """Make a rename or a new file in ``path`` durable (fsync of the directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def dir_problem(path: str) -> str | None:
    """Why ``path`` cannot hold our files (made 0700 if missing), or None: a missing parent,
    a file in the way, no permission, a read-only file system. A full disk is not counted:
    it is a state that passes, not a setting to fix."""
    try:
        make_private_dirs(path)
    except OSError as exc:
        return None if exc.errno in _OUT_OF_SPACE else f"{path}: {exc.strerror}"
    if not os.path.isdir(path):
        return f"{path}: not a directory"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{path}: not writable by this user"
    return None


def make_private_dirs(path: str | Path) -> None:
    """``path`` and every missing folder above it, owner-only (0700). ``mkdir -p`` (and
    ``Path.mkdir(parents=True)``) leaves the parents it creates to the umask: 0755, open
    to every user, for folders that hold calls."""
    missing: list[Path] = []
    folder = Path(path)
    while not os.path.lexists(folder):
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process
            folder.mkdir(mode=0o700)


def free_bytes(path: str | Path) -> int | None:
    """Bytes an unprivileged writer may still use on the filesystem of ``path`` (or of its
    nearest existing parent: a folder made on the first write); None where it cannot tell."""
    path = Path(path)
    for where in (path, *path.parents):
        try:
            stat = os.statvfs(where)
        except FileNotFoundError:
            continue
        except OSError:
            return None
        return stat.f_bavail * stat.f_frsize
    return None


class KeepFree(OSError):
    """``ENOSPC`` of the setting ``disk_keep_free_bytes``, not of the disk (yet)."""


def check_room(path: str | Path, size_bytes: int, keep_free_bytes: int) -> None:
    """Raise ``KeepFree`` (an ``OSError(ENOSPC)``) when writing ``size_bytes`` under ``path`` would leave its
    disk with less than ``keep_free_bytes`` free (the setting ``disk_keep_free_bytes``: the
    traced program's own files must still fit when a long outage fills our spool)."""
    if keep_free_bytes <= 0:
        return
    free = free_bytes(path)
    if free is not None and free - size_bytes < keep_free_bytes:
        raise KeepFree(errno.ENOSPC, f"its disk has {_mib(free)} free and keeps "
                      f"{_mib(keep_free_bytes)} free for other files (disk_keep_free_bytes)")


def _mib(size_bytes: int) -> str:
    return f"{size_bytes / (1 << 20):,.1f} MiB"
