"""Files behind a ring set: the private directory, the segment, liveness of processes.

Everything a ring set leaves on the machine carries one name,
``engine-rings-<owner pid>-<owner start ticks>-<random>``
(not ``engine-ring-``, the name of versions that deleted the ring sets of dead owners unread:
they must not delete ours):

- ``/dev/shm/<name>.seg`` -- the shared-memory segment (mode 0600);
- ``/dev/shm/<name>.json`` -- a copy of the sender's settings (no API key, mode 0600), kept
  beside the segment so that a segment whose private directory was cleaned away (a job
  scheduler's per-job ``TMPDIR``, a tmp cleaner) can still be recovered;
- ``<tmpdir>/<name>/`` -- a private 0700 directory holding the doorbell FIFO, the slot lock
  and the sender's settings; and the segment itself (``segment``) where /dev/shm had too
  little room when the engine started (a container's default 64 MiB).

``RingSet.unlink()`` removes all of them. If the owner dies without unlinking (SIGKILL,
OOM killer), its sender drains and removes them; if the sender died too, the next
``RingSet.create()`` by the same user removes every ring set whose owner is gone -- the pid
no longer exists, or it now belongs to a process with another start time -- and that holds
no record, and keeps the others for recovery (:mod:`engine.ring._orphans`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import TYPE_CHECKING

from engine.common._reserve import reserve

if TYPE_CHECKING:
    from engine.ring._layout import RingSpec

NAME_PREFIX = "engine-rings-"
SEGMENT_SUFFIX = ".seg"
SIDECAR_SUFFIX = ".json"
DISK_SEGMENT = "segment"
# tmpfs where available (Linux); elsewhere a regular file, which still works through mmap.
SEGMENT_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def process_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot; None if it is gone or a zombie.

    Comparing start times tells a live producer from an unrelated process that was
    given the same pid later. Without ``/proc`` the start time is unknown (0) and only
    the pid is compared.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            stat = stat_file.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return _start_ticks_without_proc(pid)
    # The command name (field 2) may hold spaces and parentheses; fields after it do not.
    fields = stat[stat.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):  # a SIGKILLed child not yet reaped is a zombie: dead
        return None
    return int(fields[19])  # field 22, starttime


def _start_ticks_without_proc(pid: int) -> int | None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return 0
    return 0


def is_alive(pid: int, start_ticks: int) -> bool:
    """Whether the process that recorded (pid, start_ticks) still runs."""
    now = process_start_ticks(pid)
    return now is not None and (start_ticks == 0 or now == 0 or now == start_ticks)


def make_private_dir() -> str:
    """Create the owner's 0700 directory; its basename is the ring set's name."""
    pid = os.getpid()
    start = process_start_ticks(pid) or 0
    return tempfile.mkdtemp(prefix=f"{NAME_PREFIX}{pid}-{start}-")


def segment_path(name: str, private_dir: str | None = None) -> str:
    """Where ring set ``name``'s segment is: in /dev/shm, or in its private directory
    (``private_dir``; by default the one in this temp dir) when /dev/shm had too little
    room for it (:func:`disk_segment_path`)."""
    shm = os.path.join(SEGMENT_DIR, name + SEGMENT_SUFFIX)
    if tempfile.gettempdir() != SEGMENT_DIR and not os.path.exists(shm):
        disk = disk_segment_path(name, private_dir)
        if os.path.exists(disk):
            return disk
    return shm


def spec_segment_path(spec: RingSpec) -> str:
    """:func:`segment_path` by the spec's absolute paths (a process with another TMPDIR, a
    Ray worker, finds a segment on disk too)."""
    return segment_path(spec.shm_name, os.path.dirname(spec.lock_path))


def disk_segment_path(name: str, private_dir: str | None = None) -> str:
    """The segment of a ring set whose engine found too little room in /dev/shm (a
    container's 64 MiB): a file in its private directory, mapped the same way (page cache;
    the kernel writes dirty pages back in the background)."""
    return os.path.join(private_dir or os.path.join(tempfile.gettempdir(), name), DISK_SEGMENT)


def sidecar_path(name: str) -> str:
    """The copy of the sender's settings kept beside the segment."""
    return os.path.join(SEGMENT_DIR, name + SIDECAR_SUFFIX)


def write_private(path: str, data: bytes) -> None:
    """A new file with mode 0600 holding ``data`` (refuses to replace one)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)


def dir_paths(ring_dir: str) -> dict[str, str]:
    """The ``doorbell_path`` and ``lock_path`` of a ring set whose private dir is ``ring_dir``."""
    return {"doorbell_path": os.path.join(ring_dir, "doorbell"),
            "lock_path": os.path.join(ring_dir, "slots.lock")}


def make_dir_files(spec: RingSpec, directory: str | None = None) -> None:
    """The doorbell FIFO of every sender and the slot lock of ``spec`` (mode 0600), in
    ``directory`` (default: the spec's own; a recovery builds them in a staging dir)."""
    directory = directory or os.path.dirname(spec.lock_path)
    for shard in range(spec.senders):
        os.mkfifo(os.path.join(directory, os.path.basename(spec.doorbell_of(shard))), 0o600)
    write_private(os.path.join(directory, os.path.basename(spec.lock_path)), b"")


def create_segment(name: str, size_bytes: int, on_disk: bool = False) -> int:
    """Create the segment file exclusively with mode 0600 and size it; returns the fd.
    ``on_disk``: in the ring set's private directory instead of /dev/shm."""
    path = disk_segment_path(name) if on_disk else segment_path(name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask cannot widen it, but make the mode explicit
        os.ftruncate(fd, size_bytes)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    return fd


def reserve_in_file(path: str, offset: int, length: int) -> None:
    """:func:`~engine.common._reserve.reserve` in the file ``path``."""
    fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    try:
        reserve(fd, offset, length)
    finally:
        os.close(fd)


def free_bytes() -> int | None:
    """Bytes free for this user where segments live."""
    try:
        st = os.statvfs(SEGMENT_DIR)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def remove_ring_files(name: str, private_dir: str) -> None:
    """Remove the segment, its settings copy and the private directory; missing pieces are
    fine."""
    for path in (segment_path(name), sidecar_path(name)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    shutil.rmtree(private_dir, ignore_errors=True)


def _owner_of(entry_name: str) -> tuple[int, int] | None:
    """(pid, start ticks) encoded in an entry name, or None if it is not ours."""
    if not entry_name.startswith(NAME_PREFIX):
        return None
    parts = entry_name[len(NAME_PREFIX) :].split("-", 2)
    if len(parts) != 3 or not (parts[0].isdigit() and parts[1].isdigit()):
        return None
    return int(parts[0]), int(parts[1])
