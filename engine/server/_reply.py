"""Helpers the object, table, feedback and other routes share: replies, pages, clocks."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Iterable
from typing import Any

import msgspec
from aiohttp import web

from engine.server._body import ApiError
from engine.server._state import check_project_id

_json = msgspec.json.Encoder()
# the most rows one query answers; ``limit`` may ask for fewer, never more
MAX_QUERY_ROWS = 10_000


def ok(payload: Any) -> web.Response:
    return web.Response(body=_json.encode(payload), content_type="application/json")


def now_us() -> int:
    return time.time_ns() // 1000


def raw_json(text: str) -> msgspec.Raw:
    """Stored JSON text sent back as is, without a decode/encode round trip."""
    return msgspec.Raw(text.encode())


def page_of(limit: int | None, offset: int | None, where: str = "") -> tuple[int, int]:
    """``(limit, offset)`` validated and capped at :data:`MAX_QUERY_ROWS`."""
    if limit is not None and limit < 0:
        raise ApiError(422, f"{where}limit: must be >= 0, got {limit}")
    if offset is not None and not 0 <= offset < 2**63:
        raise ApiError(422, f"{where}offset: must be within 0..2**63-1 (SQLite's), got {offset}")
    return min(MAX_QUERY_ROWS if limit is None else limit, MAX_QUERY_ROWS), offset or 0


def project_of(project_id: str, field: str = "project_id") -> str:
    check_project_id(project_id, field)
    return project_id


def not_found(what: str) -> ApiError:
    return ApiError(404, f"{what} not found")


async def stream_jsonl(
    request: web.Request, chunks: AsyncGenerator[Iterable[Any], None]
) -> web.StreamResponse:
    """Write each chunk of items as JSON lines as it comes; the reply is never held whole.

    Nothing is sent before the first chunk is ready, so whatever fails while the query
    starts (an unknown table, a bad filter) still gets its own status and reason instead
    of a 200 cut short. The chunks are closed however the reply ends.
    """
    async with contextlib.aclosing(chunks):
        first = await anext(chunks, None)
        response = web.StreamResponse(headers={"Content-Type": "application/jsonl"})
        await response.prepare(request)
        if first is not None:
            await _write_lines(response, first)
            async for items in chunks:
                await _write_lines(response, items)
    await response.write_eof()
    return response


async def _write_lines(response: web.StreamResponse, items: Iterable[Any]) -> None:
    data = _json.encode_lines(items)
    if data:
        await response.write(data)
