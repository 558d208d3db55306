"""The exception tree of engine.

    EngineError                       root: catch this to catch everything engine raises
    ├── ConfigError                   a setting is invalid; the message names the field
    ├── Closed                        the Engine / tracer was closed; nothing more is accepted
    ├── RingFull                      the producer's ring stayed full past max_block_ms (on_full="raise")
    ├── PayloadTooLarge               one item is larger than the largest request the server accepts
    ├── EncodeError                   a value cannot be encoded (strict mode only)
    └── SendError                     a request failed; ``retriable`` says whether trying again may help
        └── HTTPError                 the server answered with an error status (``status``, ``reason``)
"""

from __future__ import annotations


class EngineError(Exception):
    """Root of every error engine raises on purpose."""


class ConfigError(EngineError, ValueError):
    """A configuration value is invalid. ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class Closed(EngineError):
    """The engine or tracer is closed."""


class RingFull(EngineError):
    """The producer's ring stayed full for longer than ``max_block_ms``."""


class PayloadTooLarge(EngineError, ValueError):
    """A single item exceeds the largest request body the server accepts."""

    def __init__(self, call_id: str | None, size_bytes: int, limit_bytes: int) -> None:
        super().__init__(
            f"call {call_id}: encoded item is {size_bytes} bytes, larger than the "
            f"{limit_bytes}-byte request limit"
        )
        self.call_id = call_id
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes


class EncodeError(EngineError, TypeError):
    """A value could not be encoded to JSON (raised only in strict mode)."""


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
