"""The dead-letter file: items the server refused for good, kept so they can be replayed.

One JSON object per line, the item embedded as JSON (not as a string), so ``jq`` and
``read_dead_letters`` read it back byte for byte::

    {"ts":"2026-11-28T11:51:18.045946Z","reason":"422","status":422,"call_id":"…",
     "route":"/call/upsert_batch","project":"ent/proj","item":{…the item as it was sent…}}

The file is created 0600 (items hold user data) and appended with one ``write`` per line
(``O_APPEND``), so a crash leaves at most a torn last line, which the reader skips.
"""

from __future__ import annotations

import datetime
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import msgspec

_UTC = datetime.timezone.utc


class DeadLetter(msgspec.Struct, frozen=True):
    """One dead-lettered item as read back; ``item`` is its raw JSON bytes."""

    ts: str
    reason: str
    status: int | None
    call_id: str | None
    route: str
    project: str
    item: msgspec.Raw

    @property
    def item_json(self) -> bytes:
        return bytes(self.item)


class _Envelope(msgspec.Struct):
    ts: str
    reason: str
    status: int | None
    call_id: str | None
    route: str
    project: str


_encoder = msgspec.json.Encoder()
_reader = msgspec.json.Decoder(DeadLetter)


class DeadLetters:
    """Appends dead letters to ``path``; the file is created on the first ``add``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.counts: dict[str, int] = Counter()
        self._fd: int | None = None

    def add(
        self,
        *,
        reason: str,
        status: int | None,
        call_id: str | None,
        route: str,
        project: str,
        item_json: bytes,
    ) -> None:
        """Append one item. ``item_json`` must be one JSON value (as the producer encoded it)."""
        item_json = _one_line_json(item_json, call_id)
        envelope = _Envelope(_now_iso(), reason, status, call_id, route, project)
        head = _encoder.encode(envelope)
        line = b"".join((head[:-1], b',"item":', item_json, b"}\n"))
        os.write(self._open(), line)
        self.counts[reason] += 1

    def close(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DeadLetters:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
            self._fd = os.open(self.path, flags, 0o600)
            os.fchmod(self._fd, 0o600)  # an existing file keeps its mode otherwise
        return self._fd


def read_dead_letters(path: str | os.PathLike[str]) -> Iterator[DeadLetter]:
    """Yield every dead letter in ``path``, oldest first, for replay.

    A torn last line (the writer died mid-line) is skipped; a malformed line anywhere else
    raises ``ValueError`` naming the line, since that is corruption, not a crash.
    """
    with open(path, "rb") as file:
        lines = file.read().split(b"\n")
    last = len(lines) - 1  # after the final newline: empty, or a torn write
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield _reader.decode(line)
        except msgspec.DecodeError as exc:
            if number - 1 == last:
                return
            raise ValueError(f"{os.fspath(path)}:{number}: malformed dead letter: {exc}") from None


def _one_line_json(item_json: bytes, call_id: str | None) -> bytes:
    # An invalid item would corrupt its line and make the file unreplayable: refuse it loudly.
    try:
        msgspec.json.decode(item_json)
    except msgspec.DecodeError as exc:
        raise ValueError(f"dead letter for call {call_id}: item is not valid JSON: {exc}") from None
    if b"\n" in item_json or b"\r" in item_json:  # pretty-printed: strings never hold raw newlines
        return msgspec.json.format(item_json, indent=-1)
    return item_json


def _now_iso() -> str:
    return datetime.datetime.now(_UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
