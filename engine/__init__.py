"""engine: multiprocess, high-throughput ingestion of LLM and evaluation traces."""

from engine._errors import (
    Closed,
    ConfigError,
    EncodeError,
    EngineError,
    HTTPError,
    PayloadTooLarge,
    RingFull,
    SendError,
)

__version__ = "0.1.0"

__all__ = [
    "Closed",
    "ConfigError",
    "EncodeError",
    "EngineError",
    "HTTPError",
    "PayloadTooLarge",
    "RingFull",
    "SendError",
    "__version__",
]
