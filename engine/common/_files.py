"""File-system helpers shared by processes that make files durable."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def fsync_dir(path: str | Path) -> None:
    """Make a rename or a new file in ``path`` durable (fsync of the directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
