"""glibc malloc settings for the engine's own long-running processes (sender, ``engine serve``).

Request bodies are megabytes. By default glibc serves such blocks with a fresh ``mmap`` and
unmaps them on free, so every body is paid again in page faults and zeroed pages (about a
tenth of the count sink's CPU at 90k calls/s). Raising the mmap threshold keeps them in the
heap, where freed blocks are reused warm; the trim threshold bounds how much free heap is
kept before it is returned to the OS. What is held stays bounded by the process's own
limits (``max_in_flight_bytes``, the body limit times the requests in flight).

Never applied to user processes (producers): their allocator is theirs. A no-op where the
C library has no ``mallopt`` (musl, macOS).
"""

from __future__ import annotations

import ctypes

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 64 << 20
TRIM_THRESHOLD_BYTES = 256 << 20


def tune_for_large_buffers() -> bool:
    """Apply the settings above; True if the C library took them."""
    try:
        # the symbols already loaded into this process, the C library's among them:
        # ctypes.util.find_library("c") would run `ldconfig -p` in a subprocess to find it
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
