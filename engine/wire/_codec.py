"""Encoding rules of the wire (WIRE.md §2): ids, timestamps, a fast reusable encoder."""

from __future__ import annotations

import datetime as _dt
import os
import time
from typing import Any

import msgspec

UTC = _dt.timezone.utc


def uuid7() -> str:
    """A new UUIDv7 as lowercase 8-4-4-4-12 text (48-bit Unix ms, version 7, RFC variant)."""
    ms = time.time_ns() // 1_000_000
    r = int.from_bytes(os.urandom(10), "big")
    # 48 bits ms | 4 bits version | 12 bits rand_a | 2 bits variant | 62 bits rand_b
    v = (ms << 80) | (0x7 << 76) | ((r >> 62) & 0xFFF) << 64 | (0b10 << 62) | (r & ((1 << 62) - 1))
    h = f"{v:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def uuid_bytes(text: str) -> bytes:
    """16-byte binary form of a canonical UUID text (as carried in ring record headers)."""
    return bytes.fromhex(text.replace("-", ""))


def uuid_text(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(UTC)


def _to_utc(value: _dt.datetime) -> _dt.datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class Stringified:
    """Counts values that had to be turned into their string form to encode."""

    count = 0


def _enc_hook(obj: Any) -> Any:
    """Lenient fallback, as the real client does: unknown objects become their str()."""
    Stringified.count += 1
    try:
        return str(obj)
    except Exception:  # a broken __str__ must not break tracing
        return f"<unprintable {type(obj).__qualname__}>"


def _strict_hook(obj: Any) -> Any:
    from engine._errors import EncodeError

    raise EncodeError(f"cannot encode value of type {type(obj).__qualname__!r} to JSON")


encoder = msgspec.json.Encoder(enc_hook=_enc_hook, decimal_format="number")
strict_encoder = msgspec.json.Encoder(enc_hook=_strict_hook, decimal_format="number")


def encode(obj: Any) -> bytes:
    """Compact UTF-8 JSON with the wire's rules.

    msgspec itself writes NaN/±Inf as null and aware datetimes as RFC 3339 (``Z`` for UTC);
    values it cannot encode are stringified and counted, as the real client does.
    """
    return encoder.encode(obj)


def decode(data: bytes | str, type: Any = Any) -> Any:
    return msgspec.json.decode(data, type=type, dec_hook=_dec_hook)


def _dec_hook(type_: Any, obj: Any) -> Any:
    raise NotImplementedError(f"cannot decode {type_!r}")
