"""Encoding rules of the wire (WIRE.md §2): ids, timestamps, a fast reusable encoder."""

from __future__ import annotations

import datetime as _dt
import os
import random
import threading
import time
from typing import Any

import msgspec

from engine.native._accel import native as _native
from engine.wire import _lossy
from engine.wire._forms import NO_FORM, brief_error, data_form, str_or_placeholder

UTC = _dt.timezone.utc


# Ids need uniqueness, not secrecy, so a private Mersenne Twister stands in for os.urandom
# (a syscall, and slower here). Private, so user code calling random.seed() cannot make two
# workers produce the same ids; reseeded from os.urandom in every forked child, so a child
# never repeats its parent's sequence (spawned children import afresh).
_rng = random.Random()
_random_bits = _rng.getrandbits
os.register_at_fork(after_in_child=_rng.seed)

# the 80 bits after the timestamp: 4-bit version, 12-bit rand_a, 2-bit variant, 62-bit rand_b
_RAND_MASK = (0x0FFF << 64) | ((1 << 62) - 1)
_VERSION_VARIANT = (0x7 << 76) | (0b10 << 62)

# (unix ms, its 6 raw bytes, "tttttttt-tttt-") — what changes once per millisecond; a tuple
# so one assignment replaces all (threads never see a new ms with an old prefix)
_ms_prefix: tuple[int, bytes, str] = (-1, b"", "")


def _ms_cached() -> tuple[int, bytes, str]:
    global _ms_prefix
    ms = time.time_ns() // 1_000_000
    cached = _ms_prefix
    if cached[0] != ms:
        raw = ms.to_bytes(6, "big")
        t = raw.hex()
        cached = _ms_prefix = (ms, raw, f"{t[:8]}-{t[8:]}-")
    return cached


def _uuid7_py() -> str:
    """A new UUIDv7 as lowercase 8-4-4-4-12 text (48-bit Unix ms, version 7, RFC variant)."""
    prefix = _ms_cached()[2]
    h = ((_random_bits(80) & _RAND_MASK) | _VERSION_VARIANT).to_bytes(10, "big").hex()
    return f"{prefix}{h[:4]}-{h[4:8]}-{h[8:]}"


def _uuid7_bytes_py() -> tuple[str, bytes]:
    """A new UUIDv7 as (canonical text, its 16 raw bytes) — the ring header carries raw ids."""
    _, ms_raw, prefix = _ms_cached()
    tail = ((_random_bits(80) & _RAND_MASK) | _VERSION_VARIANT).to_bytes(10, "big")
    h = tail.hex()
    return f"{prefix}{h[:4]}-{h[4:8]}-{h[8:]}", ms_raw + tail


def _uuid_bytes_py(text: str) -> bytes:
    """16-byte binary form of a UUID text, 8-4-4-4-12 or 32 bare hex digits (as carried in
    ring record headers); ValueError for anything else."""
    if len(text) == 36 and text[8] == text[13] == text[18] == text[23] == "-":
        text = text.replace("-", "")
    raw = bytes.fromhex(text) if len(text) == 32 else b""
    if len(raw) != 16:
        raise ValueError(f"{text!r} is not a UUID")
    return raw


# The same ids made in C when the accelerator is built (~20x faster; reseeded after fork).
PY_IDS = (_uuid7_py, _uuid7_bytes_py, _uuid_bytes_py)
if _native is not None:
    NATIVE_IDS = (_native.uuid7, _native.uuid7_bytes, _native.uuid_bytes)
    os.register_at_fork(after_in_child=_native.reseed)
else:
    NATIVE_IDS = None
uuid7, uuid7_bytes, uuid_bytes = NATIVE_IDS or PY_IDS


def uuid_text(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _utcnow_py() -> _dt.datetime:
    return _dt.datetime.now(UTC)


# datetime.now(UTC) costs ~250 ns (a time zone conversion); the C one ~60 ns, same value.
utcnow = _utcnow_py if _native is None else _native.utcnow




class _StringifiedCounts(threading.local):
    """Counts the producer's values that had to be turned into their string form to encode
    (``count``), or into a placeholder when their ``str()`` failed (``unencodable``), per
    thread: the producer takes them after each write (``take_counts``), and threads that
    write at once must not take or drop each other's."""

    count = 0
    unencodable = 0


Stringified = _StringifiedCounts()


def _producer_hook(obj: Any) -> Any:
    """The producer's lenient fallback, as the real client does: a value whose type has a
    data form (:func:`data_form`) is written as that data, a model's fields with no JSON
    form as their str(), counted; other unknown objects become their str(), counted; one
    whose str() fails too, a placeholder saying so."""
    counted = Stringified.count, Stringified.unencodable
    form = data_form(obj, _producer_hook)
    if form is not NO_FORM:
        return form
    # a model whose dump failed after some of its fields were counted: it is counted alone
    Stringified.count, Stringified.unencodable = counted
    try:
        text = str(obj)
    except Exception as exc:
        Stringified.unencodable += 1
        return f"<unencodable {type(obj).__name__}: {brief_error(exc)}>"
    Stringified.count += 1
    return text


def _strict_hook(obj: Any) -> Any:
    from engine.common._errors import EncodeError

    form = data_form(obj)
    if form is not NO_FORM:
        return form
    raise EncodeError(f"cannot encode value of type {type(obj).__qualname__!r} to JSON")


# encode(): everything but the producer (clients, the relay, files); nothing counted
encoder = msgspec.json.Encoder(enc_hook=str_or_placeholder, decimal_format="number")
# the producer's: stringified values counted (the C encoder hands them over one by one)
producer_encoder = msgspec.json.Encoder(enc_hook=_producer_hook, decimal_format="number")
strict_encoder = msgspec.json.Encoder(enc_hook=_strict_hook, decimal_format="number")


def producer_encoders() -> tuple[Any, Any]:
    """(lenient, strict) for the producer: msgspec's encoders, which the C writer calls for
    what it does not encode itself; without the accelerator, _lossy's, which also count
    NaN/inf and bytes-like values (the C encoder counts those itself)."""
    if _native is not None:
        return producer_encoder, strict_encoder
    from engine.wire._lossy import PyEncoder

    return PyEncoder(producer_encoder), PyEncoder(strict_encoder)


_native_take_counts = getattr(_native, "take_counts", None)
_NOTHING_NATIVE = (0, 0, 0)


def take_counts() -> dict[str, int]:
    """What the producer's encoders counted in this thread since the last call (then zero),
    by reason; it runs after every write, so nothing counted costs only the reads."""
    lossy, strings = _lossy.counts, Stringified
    nonfinite, nbytes, keys = _native_take_counts() if _native_take_counts else _NOTHING_NATIVE
    nonfinite += lossy.nonfinite
    nbytes += lossy.bytes
    keys += lossy.duplicate_key
    if not (nonfinite or nbytes or keys or strings.count or strings.unencodable):
        return {}
    counts = {"stringified": strings.count, "unencodable": strings.unencodable,
              "nonfinite": nonfinite, "bytes": nbytes, "duplicate_key": keys}
    strings.count = strings.unencodable = 0
    lossy.nonfinite = lossy.bytes = lossy.duplicate_key = 0
    return {reason: n for reason, n in counts.items() if n}


def native_struct_plan(cls: type[msgspec.Struct], splice_name: str = "ended_at") -> bool:
    """Let the C accelerator encode ``cls`` itself (msgspec's bytes, strings checked 16 at a
    time); False, and msgspec keeps encoding it, when the accelerator is not built or the
    type's config is one the C encoder does not reproduce (tags, array_like, renamed-field
    escapes, default factories). ``splice_name``: the field whose offset ``put`` reports.
    """
    if _native is None:
        return False
    try:
        return _plan(cls, splice_name)
    except (AttributeError, TypeError):  # a msgspec whose Structs look otherwise: its encoder
        return False


def _plan(cls: type[msgspec.Struct], splice_name: str) -> bool:
    config = cls.__struct_config__
    if config.tag is not None or config.array_like:
        return False
    fields, names = cls.__struct_fields__, cls.__struct_encode_fields__
    if any(c in '"\\' or c < " " for name in names for c in name):
        return False  # msgspec writes field names unescaped; C would escape them
    defaults = cls.__struct_defaults__
    # per field: NODEFAULT (always written) or the default a value is left out for
    omit: list[Any] = [msgspec.NODEFAULT] * (len(fields) - len(defaults))
    for default in defaults:
        if default is msgspec.NODEFAULT or not config.omit_defaults:
            omit.append(msgspec.NODEFAULT)
        elif default is None or type(default) in (bool, int, float, str, msgspec.Raw):
            omit.append(default)  # msgspec compares these by identity, as the C side does
        else:  # a default factory, or an object msgspec may treat specially: not here
            return False
    descriptors = []
    for name in fields:
        for klass in cls.__mro__:
            if name in vars(klass):
                descriptors.append(vars(klass)[name])
                break
        else:
            return False
    _native.struct_plan(cls, tuple(names), tuple(descriptors), tuple(omit), splice_name,
                        msgspec.UNSET, msgspec.NODEFAULT)
    return True


def encode(obj: Any) -> bytes:
    """Compact UTF-8 JSON with the wire's rules.

    msgspec itself writes NaN/±Inf as null and aware datetimes as RFC 3339 (``Z`` for UTC);
    values it cannot encode are stringified, as the real client does.
    """
    return encoder.encode(obj)


def decode(data: bytes | str, type: Any = Any) -> Any:
    return msgspec.json.decode(data, type=type, dec_hook=_dec_hook)


def json_error(data: bytes) -> str | None:
    """Why ``data`` is not one JSON value in UTF-8 (as a server reads it), or None if it is."""
    try:
        msgspec.json.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return str(exc)
    except RecursionError:  # nested deeper than the decoder's stack allows
        return "nested too deep to decode (RecursionError)"
    except Exception as exc:  # decoding bytes runs no user code: whatever it is, not readable
        return f"cannot be decoded: {brief_error(exc)}"
    return None


def _dec_hook(type_: Any, obj: Any) -> Any:
    raise NotImplementedError(f"cannot decode {type_!r}")
