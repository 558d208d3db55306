"""The spool (DESIGN decision 8): batches the server could not take, kept on disk for replay.

One segment file per batch, named so that names sort oldest first::

    <created ns, 20 digits>-<pid>-<seq>.seg     (written as .tmp-<that name>.partial)
    = b"ENGSPL01" | header length (u32, big-endian) | header (JSON) | zstd(body) | digest

The header holds the route, item count, caller metadata and raw body size; the digest is a
16-byte BLAKE2b over everything before it, so any flipped bit anywhere is caught. Segments
are written atomically (temporary file, fsync, rename, fsync of the directory): a crash
leaves either a whole segment or a temporary file that the next ``Spool`` removes. A
segment that fails its checksum is moved to ``corrupt/`` and counted, never dropped
silently. Any number of processes may write (names never collide) and replay (the sender's
background replay, ``engine replay``) at once: a replayer :meth:`Spool.claim` s a segment
with a non-blocking ``flock`` before it sends it, so no segment is sent by two at a time,
and a claimer that dies lets go of it with its last descriptor.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import os
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import zstandard

from engine.common._errors import EngineError
from engine.common._files import check_room, fsync_dir, make_private_dirs
from engine.sender._fileid import names_open_file

_MAGIC = b"ENGSPL01"
_HEADER_LEN = struct.Struct(">I")
_DIGEST_BYTES = 16
_SUFFIX = ".seg"
_TMP_PREFIX = ".tmp-"  # + segment name + _TMP_SUFFIX: never matches the segment pattern
_TMP_SUFFIX = ".partial"
_ZSTD_LEVEL = 3


class SpoolFull(EngineError):
    """Adding the segment would take the spool past its ``max_bytes`` (``spool_max_bytes``)."""


class SpoolCorrupt(EngineError):
    """A segment failed its checksum; it was moved to ``corrupt/``."""


@dataclass(frozen=True)
class SpoolEntry:
    """One spooled batch. ``size_bytes`` is the file on disk, ``raw_bytes`` the body."""

    name: str
    route: str
    item_count: int
    raw_bytes: int
    size_bytes: int
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


class _Header(msgspec.Struct, frozen=True):
    route: str
    item_count: int
    raw_bytes: int
    meta: dict[str, Any] = {}


class Spool:
    """Checksummed zstd segment files in ``directory`` (0700; files 0600). Thread-safe.

    ``create=False``: a missing ``directory`` is made by the first segment written, not now
    (a sender's default spool, one per server: no empty folder for every server an engine
    delivered to without a fault); one in the way (a file) is an error now all the same.

    Bounds of :meth:`put`: ``max_bytes`` for the segments in the folder (``SpoolFull``; the
    segments other processes wrote count as of the last :meth:`pending`), and
    ``keep_free_bytes`` left free on its disk (``OSError(ENOSPC)``, as a full disk)."""

    def __init__(self, directory: str | os.PathLike[str], *, max_bytes: int | None = None,
                 keep_free_bytes: int = 0, create: bool = True) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes or None
        self.keep_free_bytes = keep_free_bytes
        self.corrupt_count = 0
        self._entries: dict[str, SpoolEntry] = {}
        self._writing: set[str] = set()  # reserved by put(), not yet renamed into place
        self._lock = threading.RLock()
        self._seq = itertools.count()
        if create or os.path.lexists(self.directory):
            _make_private_dir(self.directory)
        self._remove_stale_temporaries()
        self.pending()

    @property
    def bytes_pending(self) -> int:
        with self._lock:
            return sum(entry.size_bytes for entry in self._entries.values())

    @property
    def count_pending(self) -> int:
        with self._lock:
            return len(self._entries)

    def put(
        self, route: str, body: bytes, item_count: int, meta: dict[str, Any] | None = None
    ) -> SpoolEntry:
        """Write one batch (``body`` uncompressed) as a durable segment; raises ``SpoolFull``."""
        header = msgspec.json.encode(_Header(route, item_count, len(body), meta or {}))
        segment = _segment(header, zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(body))
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._seq):06d}{_SUFFIX}"
        entry = SpoolEntry(name, route, item_count, len(body), len(segment), meta or {})
        check_room(self.directory, len(segment), self.keep_free_bytes)
        with self._lock:
            self._reserve(entry)
            self._writing.add(name)
        try:
            self._write_atomically(name, segment)
        except BaseException:
            with self._lock:
                self._entries.pop(name, None)
            raise
        finally:
            with self._lock:
                self._writing.discard(name)
        return entry

    def pending(self) -> list[SpoolEntry]:
        """Every segment not yet done, oldest first; corrupt ones are moved aside and counted."""
        with self._lock:
            on_disk = {p.name for p in self.directory.glob("[0-9]*" + _SUFFIX)}
            for name in sorted(on_disk - self._entries.keys()):
                entry = self._discover(name)
                if entry is not None:
                    self._entries[name] = entry
            for name in self._entries.keys() - on_disk - self._writing:
                del self._entries[name]  # deleted behind our back
            return [self._entries[n] for n in sorted(self._entries) if n not in self._writing]

    def pending_of(self, pid: int) -> list[SpoolEntry]:
        """The pending segments process ``pid`` wrote (its pid is in their names)."""
        return [entry for entry in self.pending() if _writer_pid(entry.name) == pid]

    def load(self, entry: SpoolEntry) -> tuple[str, bytes]:
        """The route and uncompressed body of ``entry``; raises ``SpoolCorrupt`` if damaged."""
        data = (self.directory / entry.name).read_bytes()
        parsed = _parse(data)
        if parsed is None:
            self._quarantine(entry.name)
            raise SpoolCorrupt(f"spool segment {entry.name} failed its checksum; moved to corrupt/")
        header, payload = parsed
        return header.route, zstandard.ZstdDecompressor().decompress(payload)

    @contextlib.contextmanager
    def claim(self, entry: SpoolEntry) -> Iterator[bool]:
        """Hold ``entry`` for this replayer: yields False when another replayer holds it or
        it was done meanwhile (then skip it), True otherwise; released on exit."""
        try:
            fd = os.open(self.directory / entry.name, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            yield False
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield names_open_file(self.directory / entry.name, fd)
        finally:
            os.close(fd)

    def replace(self, entry: SpoolEntry, body: bytes, item_count: int,
                meta: dict[str, Any] | None = None) -> SpoolEntry:
        """Write what is left of the claimed ``entry`` (``body``, ``item_count`` items; its
        ``meta``, unless given) in its place, by one rename: a replayer stopped at any point
        leaves each item in one segment, the whole old one or this one."""
        meta = entry.meta if meta is None else meta
        header = msgspec.json.encode(_Header(entry.route, item_count, len(body), meta))
        segment = _segment(header, zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(body))
        rest = SpoolEntry(entry.name, entry.route, item_count, len(body), len(segment), meta)
        # the temporary is named as this process's: another Spool removes it only if we die
        scratch = f"{time.time_ns():020d}-{os.getpid()}-{next(self._seq):06d}{_SUFFIX}"
        self._write_atomically(entry.name, segment, scratch)
        with self._lock:
            if entry.name in self._entries:
                self._entries[entry.name] = rest
        return rest

    def done(self, entry: SpoolEntry) -> None:
        """Delete ``entry`` once the server acknowledged it (idempotent)."""
        with self._lock:
            self._entries.pop(entry.name, None)
        (self.directory / entry.name).unlink(missing_ok=True)

    def _reserve(self, entry: SpoolEntry) -> None:
        if self.max_bytes is not None:
            used = sum(e.size_bytes for e in self._entries.values())
            if used + entry.size_bytes > self.max_bytes:
                raise SpoolFull(
                    f"it holds {used:,} bytes and a {entry.size_bytes:,}-byte segment would "
                    f"take it past spool_max_bytes={self.max_bytes:,}")
        self._entries[entry.name] = entry

    def _write_atomically(self, name: str, segment: bytes, scratch: str | None = None) -> None:
        tmp = self.directory / f"{_TMP_PREFIX}{scratch or name}{_TMP_SUFFIX}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(tmp, flags, 0o600)
        except FileNotFoundError:  # not made yet (create=False), or removed meanwhile
            _make_private_dir(self.directory)
            fd = os.open(tmp, flags, 0o600)
        try:
            try:
                _write_all(fd, segment)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.directory / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(self.directory)

    def _discover(self, name: str) -> SpoolEntry | None:
        """Read and verify a segment this Spool did not write (left by an earlier run)."""
        try:
            data = (self.directory / name).read_bytes()
        except FileNotFoundError:  # done() by another thread meanwhile
            return None
        parsed = _parse(data)
        if parsed is None:
            self._quarantine(name)
            return None
        header, _ = parsed
        return SpoolEntry(
            name, header.route, header.item_count, header.raw_bytes, len(data), header.meta
        )

    def _quarantine(self, name: str) -> None:
        corrupt_dir = self.directory / "corrupt"
        _make_private_dir(corrupt_dir)
        os.replace(self.directory / name, corrupt_dir / name)
        with self._lock:
            self._entries.pop(name, None)
            self.corrupt_count += 1

    def _remove_stale_temporaries(self) -> None:
        for tmp in self.directory.glob(_TMP_PREFIX + "*" + _TMP_SUFFIX):
            if not _pid_alive(_writer_pid(tmp.name)):
                tmp.unlink(missing_ok=True)


def pending_items(directory: str | os.PathLike[str]) -> tuple[int, int]:
    """(items, bytes on disk) of the segments in ``directory``, read without changing
    anything (no folder made, nothing moved aside); a missing folder holds none."""
    items = size = 0
    for path in Path(directory).glob("[0-9]*" + _SUFFIX):
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # sent meanwhile
            continue
        parsed = _parse(data)
        if parsed is not None:
            items += parsed[0].item_count
            size += len(data)
    return items, size


def _segment(header: bytes, payload: bytes) -> bytes:
    body = b"".join((_MAGIC, _HEADER_LEN.pack(len(header)), header, payload))
    return body + hashlib.blake2b(body, digest_size=_DIGEST_BYTES).digest()


def _parse(data: bytes) -> tuple[_Header, bytes] | None:
    """Header and compressed payload of a segment, or None if it is damaged."""
    body, digest = data[:-_DIGEST_BYTES], data[-_DIGEST_BYTES:]
    fixed = len(_MAGIC) + _HEADER_LEN.size
    if len(data) < fixed + _DIGEST_BYTES or not body.startswith(_MAGIC):
        return None
    if hashlib.blake2b(body, digest_size=_DIGEST_BYTES).digest() != digest:
        return None
    (header_len,) = _HEADER_LEN.unpack_from(body, len(_MAGIC))
    try:
        header = msgspec.json.decode(body[fixed : fixed + header_len], type=_Header)
    except msgspec.DecodeError:
        return None
    return header, body[fixed + header_len :]


def _make_private_dir(path: Path) -> None:
    make_private_dirs(path)
    os.chmod(path, 0o700)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]



def _writer_pid(name: str) -> int:
    """The pid in a segment's name, or its temporary's (-1: not one of ours)."""
    try:
        return int(name.removeprefix(_TMP_PREFIX).split("-")[1])
    except (IndexError, ValueError):
        return -1


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        return False  # a temporary of ours from before this Spool existed was abandoned
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
