"""``engine ingest``'s reading: a shard's lines from its resume offset (zstd streams
decompressed, a stream cut short told from one that ended), and each line decoded into the
server's raw ingest models, as the server checks them.

Line numbers are counted only when one is asked for (a line to report): the loop that
reads does not count them.
"""

from __future__ import annotations

import io
from contextlib import ExitStack
from typing import Any, BinaryIO

import msgspec
import zstandard

from engine.server._ingest_models import (
    RawCompletedCall,
    RawEndedCall,
    RawStartedCall,
    check_call,
)
from engine.server._limits import MAX_JSON_DEPTH, json_depth_over
from engine.wire._codec import native_struct_plan

# Lines of a few KiB: the default 8 KiB buffer costs a read() every other line
_READ_BUFFER_BYTES = 1 << 20
_COUNT_CHUNK_BYTES = 1 << 20


class _Mode(msgspec.Struct):
    mode: str = "complete"


class _CompleteLine(RawCompletedCall, kw_only=True, gc=False):
    """A complete call with the line's ``mode`` read in the same decode. Encoded, it is the
    call: ``mode`` holds its default and defaults are omitted."""

    mode: str = "complete"


native_struct_plan(_CompleteLine)
_COMPLETE = _CompleteLine.__struct_defaults__[-1]  # the default object itself (see _without_mode)
_MODE_DECODER = msgspec.json.Decoder(_Mode)
_COMPLETE_LINE = msgspec.json.Decoder(_CompleteLine)
_DECODERS = {
    "start": msgspec.json.Decoder(RawStartedCall),
    "end": msgspec.json.Decoder(RawEndedCall),
    "complete": _COMPLETE_LINE,
}
# a line that holds no `mode"` has no "mode" key: it is a complete call. (Searching for the
# quoted key costs 5x more: the search stops at every quote of the line.)
_MODE_KEY = b'mode"'
_BODY_LEVELS_ABOVE_A_CALL = 4
_MAX_CALL_DEPTH = MAX_JSON_DEPTH - _BODY_LEVELS_ABOVE_A_CALL


# -- the files ----------------------------------------------------------------------------


def is_zst(path: str) -> bool:
    return path.endswith((".zst", ".zstd"))


class ZstdStream(io.RawIOBase):
    """The decompressed bytes of a zstd file, frame after frame. zstandard's stream_reader
    ends a stream cut short as if it were whole; this one says so (``truncated``). A file
    that is not zstd raises ``zstandard.ZstdError`` on the first read."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._decompressor = zstandard.ZstdDecompressor()
        self._frame: Any = None  # the frame being decompressed; None between frames
        self._out = memoryview(b"")
        self.truncated = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._out:
            if not self._decompress_more():
                return 0
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _decompress_more(self) -> bool:
        """Decompress the next chunk of the file; False at its end."""
        data = self._raw.read(_READ_BUFFER_BYTES)
        if not data:
            self.truncated = self._frame is not None
            return False
        out = []
        while data:
            if self._frame is None:
                self._frame = self._decompressor.decompressobj()
            out.append(self._frame.decompress(data))
            data = b""
            if self._frame.eof:
                data, self._frame = self._frame.unused_data, None
        self._out = memoryview(b"".join(out))
        return True


class Source:
    """A shard's lines from ``offset`` (of the decompressed stream for .zst files):
    ``stream.readline()``; ``truncated``: a zstd stream that ended mid-frame."""

    def __init__(self, path: str, offset: int, stack: ExitStack) -> None:
        self.path = path
        self._offset = offset
        self._first_line: int | None = 1 if offset == 0 else None
        raw = stack.enter_context(open(path, "rb", buffering=_READ_BUFFER_BYTES))  # noqa: SIM115
        self._zstd: ZstdStream | None = None
        if not is_zst(path):
            raw.seek(offset)
            self.stream: BinaryIO = raw
            return
        self._zstd = ZstdStream(raw)
        self.stream = stack.enter_context(io.BufferedReader(self._zstd, _READ_BUFFER_BYTES))
        self._first_line = 1 + _count_lines(self.stream, offset)

    @property
    def truncated(self) -> bool:
        return self._zstd is not None and self._zstd.truncated

    def line_number(self, lines_read: int) -> int:
        """The number in the file of the line after ``lines_read`` lines of the shard (a
        plain file's lines before the offset are counted the first time it is asked)."""
        if self._first_line is None:
            with open(self.path, "rb") as f:
                self._first_line = 1 + _count_lines(f, self._offset)
        return self._first_line + lines_read


def _count_lines(stream: BinaryIO, size_bytes: int) -> int:
    """Newlines in the next ``size_bytes`` of ``stream``, read past (a compressed stream
    cannot seek: it is decompressed past what is done)."""
    lines = skipped = 0
    while skipped < size_bytes:
        chunk = stream.read(min(_COUNT_CHUNK_BYTES, size_bytes - skipped))
        if not chunk:
            break
        skipped += len(chunk)
        lines += chunk.count(b"\n")
    return lines


# -- the lines ----------------------------------------------------------------------------


def parse_line(line: bytes, guess: str = "complete") -> tuple[str, msgspec.Struct] | None:
    """(mode, item) of one line, its JSON-valued fields raw; None for a blank line;
    ValueError if it is not an item (invalid UTF-8 too: the server would refuse the whole
    batch holding it). ``guess``: the mode the line most likely has (the previous line's):
    a complete call is read in one decode; a start or an end, and a guess that was wrong,
    cost a look for the ``mode`` key first."""
    if not line or line.isspace():
        return None
    try:
        # the server's checks: a line it would refuse is an invalid line. A line's call
        # travels at most this deep in a body: {"batch": [{"req": {"start": CALL}}]}
        if json_depth_over(line, _MAX_CALL_DEPTH):
            raise ValueError(f"JSON nested more than {MAX_JSON_DEPTH} levels deep in a body")
        mode, item = _decode(line, guess)
        if not line.isascii():
            line.decode()  # msgspec checks a raw value's syntax, not its strings' encoding
        if not item.ok():
            check_call(item, "$")
        return mode, item
    except msgspec.DecodeError as exc:  # ValidationError included
        raise ValueError(str(exc)) from None


def _decode(line: bytes, guess: str) -> tuple[str, msgspec.Struct]:
    mode = None
    if guess == "complete":
        try:
            item = _COMPLETE_LINE.decode(line)
        except msgspec.ValidationError:
            mode = _mode(line)
            if mode == "complete":
                raise
        else:
            if item.mode == "complete":
                return "complete", _without_mode(item)
            mode = item.mode
    if mode is None:
        mode = _mode(line)
    decoder = _DECODERS.get(mode)
    if decoder is None:
        raise ValueError(f"mode {mode!r} is not one of start, end, complete")
    item = decoder.decode(line)
    return mode, _without_mode(item) if mode == "complete" else item


def _without_mode(item: _CompleteLine) -> _CompleteLine:
    """The call as it is sent: omit_defaults compares by identity, and a "complete" read
    from the line is another str than the default, which would be encoded."""
    item.mode = _COMPLETE
    return item


def _mode(line: bytes) -> str:
    return _MODE_DECODER.decode(line).mode if _MODE_KEY in line else "complete"


