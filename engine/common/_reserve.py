"""Reserving a file's space before it is written through a mapping.

A write through ``mmap`` into a page that a full filesystem cannot give (a tmpfs such as
``/dev/shm``, a sparse file on a full disk) is a SIGBUS that kills the writing process, not
an error. ``posix_fallocate`` gives the pages (or blocks) first, so no later write can fail;
the ring segments and the control block use it.
"""

from __future__ import annotations

import errno
import os

# no room for it: the caller says where and what to do
NO_ROOM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.ENOMEM})
# posix_fallocate cannot reserve on this filesystem: the pages come at first write, as before
_CANNOT_RESERVE = frozenset({errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS, errno.ENODEV})


def reserve(fd: int, offset: int, length: int) -> None:
    """Give the file's bytes ``[offset, offset + length)`` their space now. Raises
    ``OSError`` (``NO_ROOM_ERRNOS`` when there is no room); a system or filesystem that
    cannot reserve leaves them to their first write."""
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is None or length <= 0:
        return
    try:
        fallocate(fd, offset, length)
    except OSError as exc:
        if exc.errno not in _CANNOT_RESERVE:
            raise
