"""Ref resolution (WIRE.md §5): ``POST /refs/read_batch`` turns ``weave:///`` URIs into values."""

from __future__ import annotations

from typing import Any

from engine.wire._base import Request, Response

__all__ = ["RefsReadBatchReq", "RefsReadBatchRes"]


class RefsReadBatchReq(Request, kw_only=True):
    # e.g. "weave:///entity/project/object/name:digest", in the order the values come back
    refs: list[str]


class RefsReadBatchRes(Response, kw_only=True):
    # one value per ref, null where a ref does not resolve
    vals: list[Any]
