"""Wire models of the Weave trace-server protocol (msgspec Structs) and encoding rules."""

from engine.wire._codec import decode, encode, encoder, strict_encoder, utcnow, uuid7
from engine.wire.calls import *  # noqa: F403
from engine.wire.calls import __all__ as _calls_all

__all__ = ["decode", "encode", "encoder", "strict_encoder", "utcnow", "uuid7", *_calls_all]
from engine.wire.query import *  # noqa: E402, F403
from engine.wire.query import __all__ as _query_all  # noqa: E402

__all__ += _query_all
