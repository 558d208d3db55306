"""``/actions/execute_batch``: checks the action object and the calls exist and records
one run per (action, call)."""

from __future__ import annotations

from aiohttp import web

from engine.server._body import ApiError
from engine.server._reply import now_us, ok, project_of
from engine.server._routes_refs import parse_ref, resolve
from engine.server._rows import Page, Selection
from engine.server._sqlite_objects import more_of, q_record_action_runs
from engine.server._state import state_of
from engine.wire.misc import ActionsExecuteBatchReq
from engine.wire.query import CallsFilter

routes = web.RouteTableDef()
MAX_IDS = 500


async def _missing_calls(request: web.Request, project_id: str, call_ids: list[str]) -> list[str]:
    selection = Selection(project_id, CallsFilter(call_ids=call_ids))
    rows = await state_of(request).store.select_calls(selection, Page(limit=len(call_ids)))
    found = {row[1] for row in rows}
    return [cid for cid in call_ids if cid not in found]


@routes.post("/actions/execute_batch")
async def actions_execute_batch(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, ActionsExecuteBatchReq)
    project_of(req.project_id)
    call_ids = list(dict.fromkeys(req.call_ids))
    if not call_ids or len(call_ids) > MAX_IDS:
        raise ApiError(422, f"call_ids: between 1 and {MAX_IDS} ids, got {len(call_ids)}")
    ref = parse_ref(req.action_ref, "action_ref")
    if ref.kind != "object" or ref.project_id != req.project_id:
        raise ApiError(
            422, f"action_ref: {req.action_ref!r} is not an object of {req.project_id!r}"
        )
    if await resolve(request, ref, "action_ref") is None:
        raise ApiError(404, f"action_ref: {req.action_ref!r} not found")
    missing = await _missing_calls(request, req.project_id, call_ids)
    if missing:
        raise ApiError(404, f"call_ids: {missing[:5]} ({len(missing)}) not found")
    runs = [(req.project_id, req.action_ref, cid, now_us()) for cid in call_ids]
    await more_of(request).run(q_record_action_runs, runs)
    return ok({})
