"""Threads and project stats.

- ``/threads/stream_query``: threads aggregated from their turn calls (calls whose
  ``turn_id`` is their own ``id``), one JSONL line per thread.
- ``/project/stats``: bytes of stored JSON (or file content) per kind in a project.
"""

from __future__ import annotations

import datetime as _dt
import statistics
from typing import Any

from aiohttp import web

from engine.server._body import ApiError
from engine.server._query_expr import order_key
from engine.server._reply import ok, page_of, project_of, stream_jsonl
from engine.server._rows import from_us, to_us
from engine.server._state import state_of
from engine.server._store import ThreadTurn
from engine.wire.misc import ProjectStatsReq, ThreadsQueryReq

routes = web.RouteTableDef()
MAX_THREAD_TURNS = 100_000
MAX_IDS = 500


# -- project stats ------------------------------------------------------------------------


@routes.post("/project/stats")
async def project_stats(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, ProjectStatsReq)
    project_of(req.project_id)
    store = state_of(request).store
    kinds = (("trace", req.include_trace_storage_size),
             ("objects", req.include_object_storage_size), ("tables", req.include_table_storage_size),
             ("files", req.include_file_storage_size))  # fmt: skip
    sizes = {
        f"{kind}_storage_size_bytes": await store.storage_bytes(req.project_id, kind) if on else 0
        for kind, on in kinds
    }
    return ok(sizes)


# -- threads ------------------------------------------------------------------------------

_THREAD_SORT = frozenset(
    {"thread_id", "turn_count", "start_time", "last_updated", "p50_turn_duration_ms",
     "p99_turn_duration_ms"}
)  # fmt: skip


def _percentile(durations_ms: list[float], q: float) -> float | None:
    if not durations_ms:
        return None
    if len(durations_ms) == 1:
        return durations_ms[0]
    return statistics.quantiles(durations_ms, n=100, method="inclusive")[int(q) - 1]


def _thread(thread_id: str, turns: list[ThreadTurn]) -> dict[str, Any]:
    """A thread's turns in start order → a ThreadSchema."""
    spans = [(t.started_at_us, t.ended_at_us) for t in turns]
    durations = [(e - s) / 1000 for s, e in spans if e is not None and s is not None]
    return {
        "thread_id": thread_id, "turn_count": len(turns),
        "start_time": from_us(turns[0].started_at_us),
        "last_updated": from_us(max(e if e is not None else s for s, e in spans)),
        "first_turn_id": turns[0].call_id, "last_turn_id": turns[-1].call_id,
        "p50_turn_duration_ms": _percentile(sorted(durations), 50),
        "p99_turn_duration_ms": _percentile(sorted(durations), 99),
    }  # fmt: skip


def _threads(turns: list[ThreadTurn]) -> list[dict[str, Any]]:
    grouped: dict[str, list[ThreadTurn]] = {}
    for turn in turns:
        grouped.setdefault(turn.thread_id, []).append(turn)
    return [_thread(thread_id, turns) for thread_id, turns in grouped.items()]


def _turns_in_window(turns: list[ThreadTurn], req: ThreadsQueryReq) -> list[ThreadTurn]:
    """The turns started after ``after_datetime`` and before ``before_datetime`` (weave
    aggregates a thread from the turns in the window)."""
    flt = req.filter
    after = to_us(flt.after_datetime) if flt else None
    before = to_us(flt.before_datetime) if flt else None
    return [
        t for t in turns if t.started_at_us is not None
        and (after is None or t.started_at_us > after) and (before is None or t.started_at_us < before)
    ]  # fmt: skip


def _sort_threads(threads: list[dict[str, Any]], req: ThreadsQueryReq) -> list[dict[str, Any]]:
    for i, sort in enumerate(reversed(req.sort_by or [])):
        if sort.field not in _THREAD_SORT:
            index = len(req.sort_by or []) - 1 - i
            raise ApiError(422, f"sort_by[{index}].field: cannot sort threads by {sort.field!r}; "
                                f"sortable: {', '.join(sorted(_THREAD_SORT))}")  # fmt: skip
        threads.sort(
            key=lambda t: order_key(_sortable(t[sort.field])), reverse=sort.direction == "desc"
        )
    return threads


def _sortable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, _dt.datetime) else value


@routes.post("/threads/stream_query")
async def threads_stream_query(request: web.Request) -> web.StreamResponse:
    req = await state_of(request).decode(request, ThreadsQueryReq)
    project_of(req.project_id)
    thread_ids = req.filter.thread_ids if req.filter else None
    if thread_ids is not None and len(thread_ids) > MAX_IDS:
        raise ApiError(422, f"filter.thread_ids: at most {MAX_IDS} ids")
    limit, offset = page_of(req.limit, req.offset)
    rows = await state_of(request).store.thread_turns(req.project_id, thread_ids, MAX_THREAD_TURNS)
    threads = _sort_threads(_threads(_turns_in_window(rows, req)), req)[offset : offset + limit]

    async def chunks():
        yield threads

    return await stream_jsonl(request, chunks())
