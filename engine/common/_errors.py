"""The exception tree of engine.

    EngineError                       root: catch this to catch everything engine raises
    ├── ConfigError                   a setting is invalid; the message names the field
    ├── Closed                        the Engine / tracer was closed; nothing more is accepted
    │   ├── SharedMemoryFull          no room in /dev/shm for this process's ring: it does not trace
    │   └── NoRingSlot                every ring slot (max_slots) is held by another process: it does not trace
    ├── RingFull                      the producer's ring stayed full past max_block_ms (on_full="raise")
    ├── EncodeError                   call_start / call_end: an item that cannot go on the wire
    │   │                             (``field`` and ``reason`` say where and why); nothing enqueued
    │   └── PayloadTooLarge           one item is larger than the largest request the server accepts
    └── SendError                     a request failed; ``retriable`` says whether trying again may help
        └── HTTPError                 the server answered with an error status (``status``, ``reason``)
"""

from __future__ import annotations

import msgspec

REASON_MAX_CHARS = 500


class EngineError(Exception):
    """Root of every error engine raises on purpose."""


class ConfigError(EngineError, ValueError):
    """A configuration value is invalid. ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class Closed(EngineError):
    """The engine or tracer is closed."""


class SharedMemoryFull(Closed):
    """This process cannot trace: there is no room left in shared memory (``/dev/shm``) for
    its ring slot. Raised instead of the SIGBUS a write into a full tmpfs would be."""


class NoRingSlot(Closed):
    """This process cannot trace: every ring slot of the engine (``max_slots``) is held by
    another live producer process. It tries again at most once a second, without waiting."""


class RingFull(EngineError):
    """The producer's ring stayed full for longer than ``max_block_ms``."""


class EncodeError(EngineError, ValueError, TypeError):
    """An item given to ``call_start`` / ``call_end`` cannot go on the wire; nothing of it
    was enqueued. ``field`` is where (``inputs['a'][0]``, ``started_at``, ``id``) and
    ``reason`` why: ``cycle``, ``bad_string`` (lone surrogates), ``unencodable`` (no JSON
    form; in ``strict=True`` any object msgspec does not encode itself), ``oversized``,
    ``timestamp`` (naive or out of range) or ``invalid`` (a field of the wrong type, an id
    that is not a UUID, a bad project id). The op wrappers (``@tracer.op``, ``tracer.call``)
    never raise it: they replace such values by placeholders and count them."""

    def __init__(self, message: str, *, field: str = "", reason: str = "unencodable") -> None:
        super().__init__(message)
        self.field = field
        self.reason = reason


class PayloadTooLarge(EncodeError):
    """A single item exceeds the largest request body the server accepts."""

    def __init__(self, call_id: str | None, size_bytes: int, limit_bytes: int,
                 field: str = "", limit_setting: str = "max_request_bytes") -> None:
        largest = f"; largest field: {field}" if field else ""
        super().__init__(
            f"call {call_id}: encoded item is {size_bytes} bytes, larger than the "
            f"{limit_bytes}-byte limit one item has ({limit_setting}){largest}",
            field=field, reason="oversized",
        )
        self.limit_setting = limit_setting
        self.call_id = call_id
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes

    def __reduce__(self) -> tuple:  # crosses processes (a Pool task that raised it)
        return (type(self), (self.call_id, self.size_bytes, self.limit_bytes, self.field,
                             self.limit_setting))


class SendError(EngineError):
    """A request could not be completed. ``retriable`` tells whether a retry may succeed."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


class HTTPError(SendError):
    """The server answered with an error status."""

    def __init__(self, status: int, reason: str, *, url: str = "", retriable: bool | None = None):
        if retriable is None:
            retriable = status in (408, 409, 425, 429) or status >= 500
        super().__init__(f"HTTP {status} from {url or 'server'}: {reason}", retriable=retriable)
        self.status = status
        self.reason = reason
        self.url = url


def reason_of(body: bytes) -> str:
    """The human-readable reason of an error answer's body, at most ``REASON_MAX_CHARS``:
    its JSON ``reason`` / ``detail`` / ``message`` / ``error`` (the first there, as text),
    else the body's own text ("" for none)."""
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        data = None
    if isinstance(data, dict):
        for key in ("reason", "detail", "message", "error"):
            if data.get(key):
                value = data[key]
                text = value if isinstance(value, str) else msgspec.json.encode(value).decode()
                return text[:REASON_MAX_CHARS]
    return body[:REASON_MAX_CHARS].decode("utf-8", "replace")
