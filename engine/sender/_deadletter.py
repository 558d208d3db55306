"""The dead-letter file: items the server refused for good, kept so they can be replayed.

One JSON object per line, the item embedded as JSON (not as a string), so ``jq`` and
``read_dead_letters`` read it back byte for byte::

    {"ts":"2026-11-28T11:51:18.045946Z","reason":"422","status":422,"call_id":"…",
     "route":"/call/upsert_batch","project":"ent/proj","item":{…the item as it was sent…}}

The file is created 0600 (items hold user data). Any number of processes share one file
(every engine on a machine with default settings does), and ``engine replay`` takes it away
while they write. The protocol that keeps every line exactly once:

* a writer appends under ``flock`` on its descriptor, after checking, under that lock, that
  the path still names the file it has open (else the file was claimed: it reopens the
  path); a failed or short write is cut back to where it began, so a full disk never
  leaves half a line, and fsync'ed before the lock is let go;
* a claim (:func:`claim`) takes that lock and, if the path still names the file it locked,
  renames the file to ``<path>.claimed-<pid>-<start>-<n>`` (atomic: one claimer wins): a
  writer that was appending has finished, and every later writer finds the path changed.
  The claimer owns the claimed file until it is gone; one left by a claimer that died is
  claimed again by the next replay (:func:`claim_abandoned`);
* the claimer hands back what it did not deliver with :func:`settle`, so that whenever it
  dies each letter is in one file, once: the claimed file is first replaced (a whole new
  file, renamed over it) by one holding only those letters; then, holding the lock of the
  file at the path (made, empty, if there is none), it renames the claimed file to
  ``<path>.merging-<pid>-<start>-<n>-<size>`` (its size: those letters), appends to it what
  engines wrote at the path since the claim, and renames it over the path. The claimed
  file's last name goes and the dead-letter file holding its letters appears in that one
  rename; a claimer killed before it leaves the path's file as it was and a merging file
  that the next claim cuts back to its letters (:func:`claim_abandoned`). A claim takes the
  same lock before its rename, so no claim takes the path's file while it is copied.

An item that is not JSON, or nested too deep to decode, is kept as its text in a JSON
string, with ``"item_invalid":true`` (a replay does not send it). A writer killed in the
middle of a line leaves it torn; the next writer ends it with a newline first, and the
reader sets such lines aside (as it does a line nested too deep to decode) instead of
failing.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import glob
import itertools
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType

import msgspec

from engine.common._files import check_room, fsync_dir, make_private_dirs
from engine.ring import _files as _ring_files
from engine.sender._fileid import names_open_file
from engine.wire._codec import json_error

log = logging.getLogger("engine.sender")
_UTC = datetime.timezone.utc
_CLAIMED = ".claimed-"
_WRITEBACK = ".writeback-"  # a claimed file's replacement being written (see settle)
_MERGING = ".merging-"  # a claimed file taking in what engines wrote since (see settle)
_COPY_BYTES = 1 << 20
_REOPEN_TRIES = 8  # one per claim that races this append: more would be a claim storm


class DeadLetter(msgspec.Struct, frozen=True, omit_defaults=True):
    """One dead-lettered item as read back; ``item`` is its raw JSON bytes, or, when
    ``item_invalid``, a JSON string holding the text of an item that was not JSON."""

    ts: str
    reason: str
    status: int | None
    call_id: str | None
    route: str
    project: str
    item: msgspec.Raw
    item_invalid: bool = False

    @property
    def item_json(self) -> bytes:
        """The item as it was sent (an invalid one: its text, as UTF-8)."""
        if self.item_invalid:
            return msgspec.json.decode(self.item, type=str).encode()
        return bytes(self.item)


class _Envelope(msgspec.Struct, omit_defaults=True):
    ts: str
    reason: str
    status: int | None
    call_id: str | None
    route: str
    project: str
    item_invalid: bool = False


_encoder = msgspec.json.Encoder()
_reader = msgspec.json.Decoder(DeadLetter)


class DeadLetters:
    """Appends dead letters to ``path``; the file is created on the first write.

    Each ``add*`` call is one locked, fsync'ed append of whole lines, or raises ``OSError``
    having written nothing (the caller still holds the items): ``ENOSPC`` too where the
    lines would leave the disk with less than ``keep_free_bytes`` free.
    """

    def __init__(self, path: str | os.PathLike[str], *, keep_free_bytes: int = 0) -> None:
        self.path = Path(path)
        self.keep_free_bytes = keep_free_bytes
        self.counts: dict[str, int] = Counter()
        self._fd: int | None = None

    def add(self, *, reason: str, status: int | None, call_id: str | None, route: str,
            project: str, item_json: bytes) -> None:
        """Append one item, ``item_json`` as the producer encoded it (one JSON value)."""
        self.add_batch(reason=reason, status=status, route=route,
                       items=[(call_id, project, item_json)])

    def add_batch(self, *, reason: str, status: int | None, route: str,
                  items: Iterable[tuple[str | None, str, bytes]]) -> None:
        """Append (call id, project, item JSON) items sharing a reason, in one write."""
        ts = _now_iso()
        lines = []
        for call_id, project, item_json in items:
            embedded, invalid = _embedded(item_json, call_id)
            lines.append(_line(_Envelope(ts, reason, status, call_id, route, project, invalid),
                               embedded))
        self._append(b"".join(lines))
        self.counts[reason] += len(lines)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DeadLetters:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _append(self, data: bytes) -> None:
        check_room(self.path.parent, len(data), self.keep_free_bytes)
        for _ in range(_REOPEN_TRIES):
            fd = self._open()
            with _locked(fd):
                if names_open_file(self.path, fd):
                    _append_whole(fd, data)
                    return
            self.close()  # claimed since we opened it: open the path anew
        raise OSError(f"{self.path}: claimed {_REOPEN_TRIES} times while appending")

    def _open(self) -> int:
        if self._fd is None:
            self._fd = _open_for_append(self.path)
        return self._fd


def _open_for_append(path: Path) -> int:
    make_private_dirs(path.parent)
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
    except OSError:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def _locked(fd: int) -> Iterator[None]:
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _append_whole(fd: int, data: bytes) -> None:
    """Append all of ``data`` (after a newline if a torn line ends the file) and fsync; on
    any error cut the file back to its old end and raise."""
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        data = b"\n" + data  # a writer died mid-line: end that line, keep ours whole
    try:
        _write_all(fd, data)
        os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        raise


def claim(path: str | os.PathLike[str]) -> Path | None:
    """Take ``path`` away from its writers for a replay; None if there is no such file.

    Returns the claimed file, which only the caller reads and which the caller deletes when
    done; writers start a new file at ``path``.
    """
    claimed = Path(f"{os.fspath(path)}{_CLAIMED}{_claim_tag()}")
    for _ in range(_REOPEN_TRIES):
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            return None
        try:
            with _locked(fd):  # a writer appending finishes first; a settle, too
                if names_open_file(Path(path), fd):
                    os.rename(path, claimed)
                    return claimed
        finally:
            os.close(fd)
    raise OSError(f"{os.fspath(path)}: replaced {_REOPEN_TRIES} times while claiming it")


def claim_abandoned(path: str | os.PathLike[str]) -> list[Path]:
    """Claim files of ``path`` whose claimer died before finishing (a replay killed half-way).

    A claimed file that is also the dead-letter file (a replay before 2026-12-07 died
    between linking it to ``path`` and removing its claimed name) is not taken: its claimed
    name is removed, and the letters stay in the dead-letter file, once. So is a second
    name of a file already taken here or held by a live replay (which claimed that file
    at ``path``). Replacements a dead claimer was writing are removed
    (its claimed file still holds every letter); a file it was merging into ``path`` is
    cut back to its own letters and taken (``path`` still holds what was copied into it)."""
    for stale in glob.glob(glob.escape(os.fspath(path)) + _WRITEBACK + "*"):
        owner = _claimer(stale, _WRITEBACK)
        if owner is not None and not _ring_files.is_alive(*owner):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)
    taken = [claimed for merging in _glob(path, _MERGING)
             if (claimed := _take_merging(merging, path)) is not None]
    held = [old for old in claimed_files(path) if _claimed_by_a_live_process(old)]
    seen = {(stat.st_dev, stat.st_ino) for old in held if (stat := _stat(old)) is not None}
    for old in claimed_files(path):
        if _claimed_by_a_live_process(old):
            continue
        claimed = Path(f"{os.fspath(path)}{_CLAIMED}{_claim_tag()}")
        try:
            os.rename(old, claimed)  # two replays may find it: one rename wins
        except FileNotFoundError:
            continue
        stat = os.stat(claimed)
        if stat.st_nlink > 1 and ((stat.st_dev, stat.st_ino) in seen or _same_file(claimed, path)):
            os.unlink(claimed)  # another name holds these letters: sent from there, once
            continue
        seen.add((stat.st_dev, stat.st_ino))
        taken.append(claimed)
    return taken


def _claimed_by_a_live_process(claimed: str) -> bool:
    owner = _claimer(claimed)
    return owner is not None and _ring_files.is_alive(*owner)


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _take_merging(merging: str, path: str | os.PathLike[str]) -> Path | None:
    """A file a dead claimer was merging into ``path``, claimed and cut back to the letters
    it held before the merge (the size in its name); None if its claimer lives or another
    replay took it first."""
    owner = _claimer(merging, _MERGING)
    size = merging.rsplit("-", 1)[1]
    if owner is None or _ring_files.is_alive(*owner) or not size.isdigit():
        return None
    claimed = Path(f"{os.fspath(path)}{_CLAIMED}{_claim_tag()}")
    try:
        os.rename(merging, claimed)  # two replays may find it: one rename wins
    except FileNotFoundError:
        return None
    os.truncate(claimed, int(size))
    return claimed


def settle(claimed: Path, path: str | os.PathLike[str], back: list[DeadLetter]) -> None:
    """End a claim: the letters of ``claimed`` still to deliver (``back``, possibly with new
    reasons) go to the dead letters at ``path``, and ``claimed`` goes, such that a claimer
    killed at any point leaves each letter in one file, once (see the module doc). Raises
    ``OSError`` having changed nothing but, possibly, ``claimed`` holding just ``back``."""
    writeback = Writeback(path)
    try:
        writeback.add(back)
    except BaseException:
        writeback.discard()
        raise
    writeback.settle(claimed)


class Writeback:
    """What a claim hands back, written as it comes to ``<path>.writeback-<tag>`` (a replay
    of a file larger than memory holds little of it at once), then made the claimed file
    and merged into ``path`` by :meth:`settle`. A claimer that dies while it writes leaves
    the claimed file whole and this file to :func:`claim_abandoned`, which removes it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = path
        self.scratch = Path(f"{os.fspath(path)}{_WRITEBACK}{_claim_tag()}")
        self.letters = 0  # written so far (a copied tail's lines included)
        self._fd: int | None = None

    def add(self, letters: Iterable[DeadLetter]) -> None:
        data = b"".join(_encoder.encode(letter) + b"\n" for letter in letters)
        if data:
            _write_all(self._open(), data)
            self.letters += data.count(b"\n")

    def copy_tail(self, source: Path, offset: int) -> int:
        """Append ``source`` from byte ``offset`` on, as it is (lines not read: a replay
        that stopped there); returns the number of lines copied."""
        lines, last = 0, b""
        with open(source, "rb") as file:
            file.seek(offset)
            while chunk := file.read(_COPY_BYTES):
                _write_all(self._open(), chunk)
                lines += chunk.count(b"\n")
                last = chunk
        if last and not last.endswith(b"\n"):  # a torn last line: ended, as a writer would
            _write_all(self._open(), b"\n")
            lines += 1
        self.letters += lines
        return lines

    def discard(self) -> None:
        """Give up: the claimed file stays as it is."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.scratch)

    def settle(self, claimed: Path) -> None:
        """End the claim (see :func:`settle`)."""
        if self._fd is None:
            os.unlink(claimed)
            return
        try:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            os.rename(self.scratch, claimed)
        except BaseException:
            self.discard()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.scratch)
            raise
        for _ in range(_REOPEN_TRIES):
            fd = _open_for_append(Path(self.path))
            try:
                with _locked(fd):  # no engine appends, no claim renames it, until we are done
                    if names_open_file(Path(self.path), fd):
                        _merge_into(claimed, self.path, fd)
                        return
            finally:
                os.close(fd)
        raise OSError(f"{os.fspath(self.path)}: claimed {_REOPEN_TRIES} times while handing "
                      "back to it")

    def _open(self) -> int:
        if self._fd is None:
            fd = os.open(self.scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                         | getattr(os, "O_CLOEXEC", 0), 0o600)
            os.fchmod(fd, 0o600)  # whatever the umask: engines append to it once it is merged
            self._fd = fd
        return self._fd


def _merge_into(claimed: Path, path: str | os.PathLike[str], live_fd: int) -> None:
    """``claimed`` followed by what the locked dead-letter file ``live_fd`` holds becomes
    the file at ``path``, in one rename that also removes the claimed file's last name."""
    size = os.stat(claimed).st_size
    merging = Path(f"{os.fspath(path)}{_MERGING}{_claim_tag()}-{size}")
    os.rename(claimed, merging)
    try:
        fd = os.open(merging, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))
        try:
            offset = 0
            while chunk := os.pread(live_fd, _COPY_BYTES, offset):
                _write_all(fd, chunk)
                offset += len(chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(merging, path)
    except BaseException:  # a full disk: the claimed file as it was, for the next replay
        with contextlib.suppress(OSError):
            os.truncate(merging, size)
            os.rename(merging, claimed)
        raise
    fsync_dir(Path(path).parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    try:
        return os.path.samefile(a, b)
    except FileNotFoundError:
        return False


def claimed_files(path: str | os.PathLike[str]) -> list[str]:
    """Files claimed from ``path`` and not yet deleted, by replays running or dead."""
    return _glob(path, _CLAIMED)


def _glob(path: str | os.PathLike[str], mark: str) -> list[str]:
    return sorted(glob.glob(glob.escape(os.fspath(path)) + mark + "*"))


_claim_numbers = itertools.count()


def _claim_tag() -> str:
    pid = os.getpid()
    return f"{pid}-{_ring_files.process_start_ticks(pid) or 0}-{next(_claim_numbers)}"


def _claimer(claimed: str, mark: str = _CLAIMED) -> tuple[int, int] | None:
    parts = claimed.rsplit(mark, 1)[1].split("-")
    if len(parts) != (4 if mark == _MERGING else 3) or not all(p.isdigit() for p in parts):
        return None
    return int(parts[0]), int(parts[1])


def read_dead_letters(path: str | os.PathLike[str],
                      on_malformed: Callable[[int, bytes], None] | None = None,
                      ) -> Iterator[DeadLetter]:
    """Yield every dead letter in ``path``, oldest first, for replay.

    A torn last line (the writer died mid-line) is skipped. A malformed line elsewhere (a
    torn line a later writer ended) goes to ``on_malformed(line number, line)``; without
    it, it raises ``ValueError`` naming the line.
    """
    for letter, _ in read_dead_letters_at(path, on_malformed):
        yield letter


def read_dead_letters_at(path: str | os.PathLike[str],
                         on_malformed: Callable[[int, bytes], None] | None = None,
                         ) -> Iterator[tuple[DeadLetter, int]]:
    """As :func:`read_dead_letters`, each letter with the byte offset just past its line
    (where the rest of the file begins). A line at a time: a file of gigabytes (an eval's
    calls through an hour's outage) was read whole, and its letters held at once (a
    replay's memory was ~2.4x the file)."""
    offset = 0
    with open(path, "rb") as file:
        for number, line in enumerate(file, start=1):
            offset += len(line)
            if not line.endswith(b"\n"):  # the last line, torn: its writer died mid-line
                try:
                    letter = _reader.decode(line)
                except (msgspec.DecodeError, RecursionError):
                    return
                yield letter, offset
                return
            if not line.strip():
                continue
            try:
                letter = _reader.decode(line)
            except (msgspec.DecodeError, RecursionError) as exc:  # torn, or nested too deep
                if on_malformed is None:
                    raise ValueError(f"{os.fspath(path)}:{number}: malformed dead letter: "
                                     f"{exc}") from None
                on_malformed(number, line.rstrip(b"\n"))
                continue
            yield letter, offset


def last_dead_letter(path: str | os.PathLike[str], tail_bytes: int = 1 << 20) -> DeadLetter | None:
    """The newest whole dead letter in the last ``tail_bytes`` of ``path`` (None: none
    there, or no file), to say why items are refused without reading a large file."""
    try:
        with open(path, "rb") as file:
            start = max(0, file.seek(0, os.SEEK_END) - tail_bytes)
            file.seek(start)
            lines = file.read().split(b"\n")
    except OSError:
        return None
    for line in reversed(lines if start == 0 else lines[1:]):  # [0]: cut by the seek
        if line.strip():
            with contextlib.suppress(msgspec.DecodeError, RecursionError):  # torn
                return _reader.decode(line)
    return None


def holds_dead_letters(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` may be a dead-letter file: it is empty, or one of its lines is a dead
    letter. A file of something else (calls to ingest, a log) is not, and a replay must not
    take it away. Reads up to the first dead letter: a dead-letter file's first line."""
    with open(path, "rb") as file:
        empty = True
        for line in file:
            if not line.strip():
                continue
            try:
                _reader.decode(line)
            except msgspec.DecodeError:
                empty = False
                continue
            return True
    return empty


def _line(envelope: _Envelope, item_json: bytes) -> bytes:
    head = _encoder.encode(envelope)
    return b"".join((head[:-1], b',"item":', item_json, b"}\n"))


def _embedded(item_json: bytes, call_id: str | None) -> tuple[bytes, bool]:
    """(the item as its line embeds it, whether it could not be read as JSON): its JSON on
    one line; an item that is not JSON (written by a bug, or by msgspec < 0.23 for a NaN
    Decimal) or too deeply nested to decode would corrupt its line or stop the sender, so it
    is kept as its text in a JSON string and flagged."""
    error = json_error(item_json)
    if error is None and (b"\n" in item_json or b"\r" in item_json):
        try:  # pretty-printed: strings never hold raw newlines
            return msgspec.json.format(item_json, indent=-1), False
        except RecursionError:  # it decoded with a frame to spare; this recursed deeper
            error = "nested too deep to decode (RecursionError)"
    if error is None:
        return item_json, False
    log.warning("dead letter for call %s: the item cannot be read as JSON (%s); kept as its "
                "text with item_invalid", call_id, error)
    return _encoder.encode(item_json.decode("utf-8", "backslashreplace")), True


def _now_iso() -> str:
    return datetime.datetime.now(_UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
