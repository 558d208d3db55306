"""File identity checks shared by the dead-letter file and the spool, whose writers and
replayers rename files away under each other (a claim is a rename)."""

from __future__ import annotations

import os
from pathlib import Path


def names_open_file(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the open file ``fd`` (a replayer has not renamed it away)."""
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino)
