"""How deep JSON nests, read off its bytes without decoding it: engine serve's check of
every request body (``engine/server/_limits.py``) and the producer's of what msgspec wrote
for a value (``engine/producer/_sanitise.py``, ``engine/wire/_lossy.py``)."""

from __future__ import annotations

import itertools
import re

from engine.native._accel import native as _native

# The levels of containers a value of a call's field may nest (the field's own included);
# deeper parts are replaced by a placeholder (engine/producer/_sanitise.py). engine serve
# refuses a body nested past 256 levels, weave's server past 200 (RequestTooLarge), msgspec
# fails near 1,000: the producer must not write what they refuse. The C encoder
# (engine/native/_json.c, MAX_VALUE_DEPTH) counts the same levels.
MAX_VALUE_DEPTH = 100

_NOT_STRUCTURAL = bytes(sorted(set(range(256)) - set(b'[]{}"')))
_UP_DOWN = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")  # minus one: +1 / -1
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_STRING = re.compile(rb'"[^"]*"')

_native_depth_over = getattr(_native, "json_depth_over", None)


def json_depth_over(body: bytes, limit: int) -> bool:
    """True when ``body`` (JSON) nests deeper than ``limit``: the C accelerator's scan
    (``engine/native/_scan.c``, strings skipped with memchr: ~0.7 µs per 4 KB call of a
    2 MB body) where it is built, else :func:`json_depth_over_py` (~6 µs)."""
    if _native_depth_over is not None:
        return _native_depth_over(body, limit)
    return json_depth_over_py(body, limit)


def json_depth_over_py(body: bytes, limit: int) -> bool:
    """:func:`json_depth_over` in Python; about 1 ns per byte.

    Escapes go first (``\\"`` is no quote), then everything but brackets and quotes; what
    is left of a string is its quotes and any brackets inside it, and dropping adjacent
    quote pairs keeps every bracket on the same side of the string boundaries.
    """
    # it cannot nest deeper than it opens; deleting a byte finds it with memchr, where
    # bytes.count looks at every byte (~0.1 vs 0.6 ns per byte of a call's usual JSON)
    opens = 2 * len(body) - len(body.replace(b"[", b"")) - len(body.replace(b"{", b""))
    if opens <= limit:
        return False
    if b"\\" in body:
        body = _ESCAPE.sub(b"", body)
    marks = body.translate(None, _NOT_STRUCTURAL).replace(b'""', b"")
    if b'"' in marks:
        marks = _STRING.sub(b"", marks)
    return max(itertools.accumulate(b - 1 for b in marks.translate(_UP_DOWN)), default=0) > limit
