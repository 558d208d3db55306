"""SQL text with its bound values, and the ways pieces of it are put together (the call
query builder's, :mod:`engine.server._calls_sql`, and its dialects')."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple


class Sql(NamedTuple):
    text: str
    params: tuple[Any, ...] = ()


def join(parts: Sequence[Sql], sep: str) -> Sql:
    return Sql(sep.join(p.text for p in parts), tuple(v for p in parts for v in p.params))


def balanced(parts: Sequence[Sql], sep: str) -> Sql:
    """``(a sep b sep …)`` nested as a balanced tree: a flat chain parses as one level per
    operand, and 1,000 of them passed SQLite's (and ClickHouse's) expression depth (a 500);
    halves keep the depth at log2 of the count."""
    if len(parts) <= 2:
        return wrap("({})", join(parts, sep))
    half = len(parts) // 2
    return wrap("({})", join([balanced(parts[:half], sep), balanced(parts[half:], sep)], sep))


def wrap(template: str, *parts: Sql) -> Sql:
    """``template`` with ``{}`` holes filled by ``parts`` in order (params follow)."""
    return Sql(template.format(*(p.text for p in parts)), tuple(v for p in parts for v in p.params))
