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
