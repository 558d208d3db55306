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
* a claim (:func:`claim`) renames the file to ``<path>.claimed-<pid>-<start>-<n>`` (atomic:
  one claimer wins) and then takes and drops the lock once: a writer that was appending
  has finished, and every later writer finds the path changed. The claimer owns the claimed
  file until it deletes it; one left by a claimer that died is claimed again by the next
  replay (:func:`claim_abandoned`);
* the claimer hands back what it did not deliver with :func:`settle`, so that whenever it
  dies each letter is in one file, never two: the claimed file is first replaced (a whole
  new file, renamed over it) by one holding only those letters; then, if no engine has
  started a new file at the path, that file is *linked* to the path (atomic: it becomes the
  dead-letter file) before its claimed name is removed -- a claimer killed between the two
  leaves two names of one file, and the next claim drops the claimed one; if engines did
  start a new file, the letters are appended to it and the claimed file is removed right
  after (only a SIGKILL between the append's fsync and that removal leaves them in both).

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

from engine.common._files import make_private_dirs
from engine.ring import _files as _ring_files
from engine.sender._fileid import names_open_file
from engine.wire._codec import json_error

log = logging.getLogger("engine.sender")
_UTC = datetime.timezone.utc
_CLAIMED = ".claimed-"
_WRITEBACK = ".writeback-"  # a claimed file's replacement being written (see settle)
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
    having written nothing (the caller still holds the items).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
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

    def put_back(self, letters: Iterable[DeadLetter]) -> None:
        """Append letters read from a claimed file, unchanged (a replay keeps what failed)."""
        data = b"".join(_encoder.encode(letter) + b"\n" for letter in letters)
        if data:
            self._append(data)

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
            make_private_dirs(self.path.parent)
            flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
            fd = os.open(self.path, flags, 0o600)
            try:
                os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
            except OSError:
                os.close(fd)
                raise
            self._fd = fd
        return self._fd


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
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
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
    try:
        os.rename(path, claimed)
    except FileNotFoundError:
        return None
    _wait_for_writers(claimed)
    return claimed


def claim_abandoned(path: str | os.PathLike[str]) -> list[Path]:
    """Claim files of ``path`` whose claimer died before finishing (a replay killed half-way).

    A claimed file that is also the dead-letter file (its claimer died between linking it
    to ``path`` and removing its claimed name, see :func:`settle`) is not taken: its claimed
    name is removed, and the letters stay in the dead-letter file, once. So is a second
    name of a file already taken here. Replacements a dead claimer was writing are removed
    (its claimed file still holds every letter)."""
    for stale in glob.glob(glob.escape(os.fspath(path)) + _WRITEBACK + "*"):
        owner = _claimer(stale, _WRITEBACK)
        if owner is not None and not _ring_files.is_alive(*owner):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)
    taken: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for old in claimed_files(path):
        owner = _claimer(old)
        if owner is not None and _ring_files.is_alive(*owner):
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


def settle(claimed: Path, path: str | os.PathLike[str], back: list[DeadLetter],
           writer: DeadLetters) -> None:
    """End a claim: the letters of ``claimed`` still to deliver (``back``, possibly with new
    reasons) go to the dead letters at ``path``, and ``claimed`` is deleted, such that a
    claimer killed at any point leaves each letter in one file (see the module doc; the one
    exception is a SIGKILL between an append to a file engines started meanwhile and the
    deletion). Raises ``OSError`` having changed nothing but, possibly, ``claimed`` holding
    just ``back``."""
    if back:
        _replace(claimed, back, Path(f"{os.fspath(path)}{_WRITEBACK}{_claim_tag()}"))
        try:
            os.link(claimed, path)  # no file at the path: this one becomes it, atomically
        except OSError:  # engines wrote since the claim (or no hard links here): append
            writer.put_back(back)
    os.unlink(claimed)


def _replace(claimed: Path, letters: list[DeadLetter], scratch: Path) -> None:
    """Replace ``claimed`` with a file (0600, fsync'ed) holding just ``letters``."""
    data = b"".join(_encoder.encode(letter) + b"\n" for letter in letters)
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # whatever the umask: engines append to it once it is linked
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(scratch, claimed)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(scratch)
        raise


def _same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    try:
        return os.path.samefile(a, b)
    except FileNotFoundError:
        return False


def claimed_files(path: str | os.PathLike[str]) -> list[str]:
    """Files claimed from ``path`` and not yet deleted, by replays running or dead."""
    return sorted(glob.glob(glob.escape(os.fspath(path)) + _CLAIMED + "*"))


_claim_numbers = itertools.count()


def _claim_tag() -> str:
    pid = os.getpid()
    return f"{pid}-{_ring_files.process_start_ticks(pid) or 0}-{next(_claim_numbers)}"


def _claimer(claimed: str, mark: str = _CLAIMED) -> tuple[int, int] | None:
    parts = claimed.rsplit(mark, 1)[1].split("-")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    return int(parts[0]), int(parts[1])


def _wait_for_writers(claimed: Path) -> None:
    """Take the append lock once: a writer in the middle of an append finishes first."""
    fd = os.open(claimed, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        with _locked(fd):
            pass
    finally:
        os.close(fd)


def read_dead_letters(path: str | os.PathLike[str],
                      on_malformed: Callable[[int, bytes], None] | None = None,
                      ) -> Iterator[DeadLetter]:
    """Yield every dead letter in ``path``, oldest first, for replay.

    A torn last line (the writer died mid-line) is skipped. A malformed line elsewhere (a
    torn line a later writer ended) goes to ``on_malformed(line number, line)``; without
    it, it raises ``ValueError`` naming the line.
    """
    with open(path, "rb") as file:
        lines = file.read().split(b"\n")
    last = len(lines) - 1  # after the final newline: empty, or a torn write
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield _reader.decode(line)
        except (msgspec.DecodeError, RecursionError) as exc:  # torn, or nested past the stack
            if number - 1 == last:
                return
            if on_malformed is None:
                raise ValueError(f"{os.fspath(path)}:{number}: malformed dead letter: {exc}") from None
            on_malformed(number, line)


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
