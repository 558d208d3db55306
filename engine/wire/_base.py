"""Base Structs shared by the wire model modules, and the query-expression type.

The conventions (WIRE.md §2): every Struct is keyword-only and omits fields equal to
their default when encoded; top-level request bodies reject unknown keys (the server
answers them with 422); nested schemas and every response ignore unknown keys, because
servers add fields over time.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["Request", "Nested", "Response", "Query"]


class Request(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """A top-level request body."""


class Nested(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A schema nested inside a request body."""


class Response(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A response body (or one line of a JSONL stream)."""


Query = dict[str, Any]
"""A Mongo-like filter expression: ``{"$expr": {"$and": [{"$eq": [...]}, ...]}}``.

Carried as plain JSON; the operators are the server's to evaluate.
"""
