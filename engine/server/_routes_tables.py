"""Tables: rows addressed by their digest, a table by the digest of its row digests.

A row is stored once per project whatever the number of tables holding it; a table
version is its ordered list of row digests. Creating the same rows again yields the same
table digest and stores nothing new; an update (append / pop / insert) makes a new
version from a base and leaves the base as it was.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from aiohttp import web

from engine.server._body import ApiError
from engine.server._digest import table_digest, value_digest
from engine.server._reply import (
    not_found,
    ok,
    page_of,
    project_of,
    raw_json,
    stream_jsonl,
)
from engine.server._state import state_of
from engine.wire._base import Nested, Request
from engine.wire.query import SortBy
from engine.wire.tables import (
    TableCreateFromDigestsReq,
    TableQueryReq,
    TableQueryStatsBatchReq,
    TableQueryStatsReq,
    TableUpdateReq,
    TableUpdateSpec,
)

routes = web.RouteTableDef()
_STREAM_PAGE_ROWS = 1000
_json = msgspec.json.Encoder()


def _expect(expected: str | None, digest: str, field: str) -> None:
    if expected is not None and expected != digest:
        raise ApiError(409, f"{field}: {expected!r} != stored digest {digest!r}")


async def _save(
    request: web.Request, project_id: str, digests: list[str], new_rows: list[tuple[str, str]]
) -> str:
    digest = table_digest(digests)
    await state_of(request).store.put_table(project_id, digest, digests, new_rows)
    return digest


async def row_digests_of(request: web.Request, project_id: str, digest: str) -> list[str]:
    stored = await state_of(request).store.table_row_digests(project_id, digest)
    if stored is None:
        raise not_found(f"table {digest!r} in project {project_id!r}")
    return stored


def _encoded(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(value_digest(row), _json.encode(row).decode()) for row in rows]


class _RawTable(Nested, kw_only=True):
    """:class:`~engine.wire.tables.TableSchemaForInsert` with each row left as JSON text."""

    project_id: str
    rows: list[msgspec.Raw]
    expected_digest: str | None = None


class _RawTableCreateReq(Request, kw_only=True):
    table: _RawTable


def _encoded_raw(rows: list[msgspec.Raw], first: int) -> list[tuple[str, str]]:
    """(digest, JSON text) of raw rows; runs on a worker thread, a chunk at a time."""
    encoded = []
    for i, raw in enumerate(rows, first):
        row = msgspec.json.decode(raw)
        if not isinstance(row, dict):
            raise ApiError(422, f"table.rows[{i}]: expected an object, got {type(row).__name__}")
        encoded.append((value_digest(row), _json.encode(row).decode()))
    return encoded


@routes.post("/table/create")
async def table_create(request: web.Request) -> web.Response:
    """Rows are decoded, digested and encoded one chunk at a time on a worker thread: a
    table of 3 MB built as Python objects all at once cost ~490 MB, and digesting a big
    one on the event loop stalled every other client for seconds."""
    table = (await state_of(request).decode(request, _RawTableCreateReq)).table
    project_id, expected, raw_rows = table.project_id, table.expected_digest, table.rows
    del table  # with raw_rows, the last holders of the body: both go once encoded
    project_of(project_id, "table.project_id")
    rows: list[tuple[str, str]] = []
    for first in range(0, len(raw_rows), _STREAM_PAGE_ROWS):
        rows += await asyncio.to_thread(
            _encoded_raw, raw_rows[first : first + _STREAM_PAGE_ROWS], first
        )
    del raw_rows
    digests = [d for d, _ in rows]
    _expect(expected, table_digest(digests), "table.expected_digest")
    digest = await _save(request, project_id, digests, rows)
    return ok({"digest": digest, "row_digests": digests})


def _apply(digests: list[str], update: TableUpdateSpec, i: int) -> tuple[str, tuple[str, str] | None]:
    """Apply one update to ``digests`` in place; returns the digest it touched (appended,
    inserted or popped, as weave reports them) and the row it added, if any."""
    if update.pop is not None:
        index = update.pop.index
        if not 0 <= index < len(digests):
            raise ApiError(400, f"updates[{i}].pop.index: {index} out of range 0..{len(digests) - 1}")
        return digests.pop(index), None
    row = _encoded([(update.append or update.insert).row])[0]  # type: ignore[union-attr]
    if update.append is not None:
        digests.append(row[0])
        return row[0], row
    assert update.insert is not None  # TableUpdateSpec holds exactly one operation
    index = update.insert.index
    if not 0 <= index <= len(digests):
        raise ApiError(400, f"updates[{i}].insert.index: {index} out of range 0..{len(digests)}")
    digests.insert(index, row[0])
    return row[0], row


@routes.post("/table/update")
async def table_update(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, TableUpdateReq)
    digests = await row_digests_of(request, project_of(req.project_id), req.base_digest)
    applied = [_apply(digests, u, i) for i, u in enumerate(req.updates)]
    added = [row for _, row in applied if row is not None]
    digest = await _save(request, req.project_id, digests, added)
    return ok({"digest": digest, "updated_row_digests": [d for d, _ in applied]})


@routes.post("/table/create_from_digests")
async def table_create_from_digests(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, TableCreateFromDigestsReq)
    found = await state_of(request).store.table_rows(project_of(req.project_id), req.row_digests)
    missing = [d for d in req.row_digests if d not in found]
    if missing:
        raise not_found(f"rows {missing[:5]} ({len(missing)} missing) in {req.project_id!r}")
    _expect(req.expected_digest, table_digest(req.row_digests), "expected_digest")
    return ok({"digest": await _save(request, req.project_id, req.row_digests, [])})


# -- queries ------------------------------------------------------------------------------


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_ABSENT = object()


def _field(value: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return _ABSENT
        value = value[part]
    return value


def _number(value: Any) -> float | None:
    """The value as ClickHouse's ``toFloat64OrNull(JSON_VALUE(…))`` reads it."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return float(value) if isinstance(value, str) and _NUMBER.fullmatch(value) else None


def _text(value: Any) -> str:
    """The value as ClickHouse's ``JSON_VALUE`` gives it: a string as itself, a list or
    an object as ``''``, anything else as its JSON."""
    if isinstance(value, str):
        return value
    return "" if value is _ABSENT or isinstance(value, (dict, list)) else json.dumps(value)


def _sort_field(items: list[tuple[int, str, Any]], path: str, descending: bool) -> None:
    """Stable-sort ``(index, digest, value)`` items by a dotted field of the value as weave's
    ClickHouse server orders rows: rows holding a number (or a numeric string) by it,
    then the others by their text, each in the direction asked; rows without the field
    last either way (``exists DESC``, then the number, then the text)."""
    keyed = [(_field(item[2], path), item) for item in items]
    keyed.sort(key=lambda pair: _text(pair[0]), reverse=descending)
    keyed.sort(key=lambda pair: _number(pair[0]) or 0.0, reverse=descending)
    keyed.sort(key=lambda pair: (pair[0] is _ABSENT, _number(pair[0]) is None))
    items[:] = [item for _, item in keyed]


def _sorted(items: list[tuple[int, str, Any]], sort_by: list[SortBy]) -> list:
    for i, sort in enumerate(reversed(sort_by)):  # stable sorts, least significant first
        if not sort.field or sort.field.startswith("."):
            raise ApiError(422, f"sort_by[{len(sort_by) - 1 - i}].field: {sort.field!r} is empty")
        _sort_field(items, sort.field.removeprefix("val."), sort.direction == "desc")
    return items


async def _selected(request: web.Request, req: TableQueryReq) -> list[tuple[int, str]]:
    """(original index, row digest) of the rows a query selects, in table order; an
    unknown table holds no rows (as weave answers)."""
    digests = await state_of(request).store.table_row_digests(project_of(req.project_id), req.digest)
    digests = digests or []
    wanted = set(req.filter.row_digests) if req.filter and req.filter.row_digests else None
    return [(i, d) for i, d in enumerate(digests) if wanted is None or d in wanted]


async def _rows(request: web.Request, req: TableQueryReq) -> AsyncIterator[list[dict]]:
    """The query's rows a page at a time; sorting needs every selected value, paging not."""
    selected = await _selected(request, req)
    limit, offset = req.limit, req.offset or 0
    page_of(limit, offset)
    store = state_of(request).store
    if req.sort_by:
        vals = await store.table_rows(req.project_id, [d for _, d in selected])
        items = [(i, d, msgspec.json.decode(vals[d])) for i, d in selected]
        chosen = _sorted(items, req.sort_by)[offset : None if limit is None else offset + limit]
        for start in range(0, len(chosen), _STREAM_PAGE_ROWS):
            page = chosen[start : start + _STREAM_PAGE_ROWS]
            yield [{"digest": d, "val": raw_json(vals[d]), "original_index": i} for i, d, _ in page]
        return
    chosen_ids = selected[offset : None if limit is None else offset + limit]
    for start in range(0, len(chosen_ids), _STREAM_PAGE_ROWS):
        page_ids = chosen_ids[start : start + _STREAM_PAGE_ROWS]
        vals = await store.table_rows(req.project_id, [d for _, d in page_ids])
        yield [{"digest": d, "val": raw_json(vals[d]), "original_index": i} for i, d in page_ids]


@routes.post("/table/query")
async def table_query(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, TableQueryReq)
    rows = [row async for page in _rows(request, req) for row in page]
    return ok({"rows": rows})


@routes.post("/table/query_stream")
async def table_query_stream(request: web.Request) -> web.StreamResponse:
    """Every selected row as one JSONL line, read from the store a page at a time."""
    req = await state_of(request).decode(request, TableQueryReq)
    return await stream_jsonl(request, _rows(request, req))


@routes.post("/table/query_stats")
async def table_query_stats(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, TableQueryStatsReq)
    return ok({"count": len(await row_digests_of(request, project_of(req.project_id), req.digest))})


@routes.post("/table/query_stats_batch")
async def table_query_stats_batch(request: web.Request) -> web.Response:
    """Stats of the tables among ``digests`` that exist; unknown digests are left out."""
    req = await state_of(request).decode(request, TableQueryStatsBatchReq)
    project_of(req.project_id)
    store = state_of(request).store
    tables = []
    for digest in dict.fromkeys(req.digests or []):
        digests = await store.table_row_digests(req.project_id, digest)
        if digests is None:
            continue
        stats: dict[str, Any] = {"digest": digest, "count": len(digests)}
        if req.include_storage_size:
            vals = await store.table_rows(req.project_id, digests)
            stats["storage_size_bytes"] = sum(len(vals[d].encode()) for d in digests)
        tables.append(stats)
    return ok({"tables": tables})
