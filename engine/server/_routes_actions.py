"""``/actions/execute_batch``: run a stored action (weave's ``ActionSpec`` object) on calls.

The result of each run is stored as feedback on the call, as weave's action worker does:
``feedback_type`` ``wandb.runnable.<action name>``, ``runnable_ref`` the action, payload
``{"output": <result>}``. Only actions that need no model run here (``contains_words``:
does the call's output, as JSON text, contain any of the words); any other action type is
a 422 saying so, and nothing is stored.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
from aiohttp import web

from engine.server._body import ApiError
from engine.server._reply import ok, project_of
from engine.server._routes_feedback import feedback_doc
from engine.server._routes_refs import parse_ref, resolve
from engine.server._state import state_of
from engine.server._store import CallsQuery
from engine.wire.feedback import FeedbackCreateReq
from engine.wire.misc import ActionsExecuteBatchReq
from engine.wire.query import CallsFilter

routes = web.RouteTableDef()
MAX_IDS = 500
RUNNABLE_PREFIX = "wandb.runnable"


def _target_words(spec: Any, action_ref: str) -> list[str]:
    """The words of a ``contains_words`` action spec; a 422 for anything else."""
    config = spec.get("config") if isinstance(spec, dict) else None
    if not isinstance(config, dict):
        raise ApiError(422, f"action_ref: {action_ref!r} is not an ActionSpec (no 'config')")
    action_type = config.get("action_type")
    if action_type != "contains_words":
        raise ApiError(422, f"action_ref: action_type {action_type!r} is not run by engine serve; "
                            "it runs only 'contains_words' (other actions need a model)")  # fmt: skip
    words = config.get("target_words")
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise ApiError(422, f"action_ref: {action_ref!r} config.target_words must be a list of strings")
    return words


def _contains_words(words: list[str], output: Any) -> bool:
    # weave matches against json.dumps of the output (default separators, ASCII escapes)
    text = json.dumps(output)
    return any(word in text for word in words)


async def _calls(request: web.Request, project_id: str, call_ids: list[str]) -> list[dict]:
    query = CallsQuery(project_id=project_id, filter=CallsFilter(call_ids=call_ids))
    found = [call async for page in state_of(request).store.query_calls(query) for call in page]
    missing = set(call_ids) - {call["id"] for call in found}
    if missing:
        raise ApiError(404, f"call_ids: {sorted(missing)[:5]} ({len(missing)}) not found")
    return found


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
    spec = await resolve(request, ref, "action_ref")
    if spec is None:
        raise ApiError(404, f"action_ref: {req.action_ref!r} not found")
    words = _target_words(spec, req.action_ref)
    docs = []
    for call in await _calls(request, req.project_id, call_ids):
        output = msgspec.json.decode(call["output"]) if call["output"] is not None else None
        feedback = FeedbackCreateReq(
            project_id=req.project_id, weave_ref=f"weave:///{req.project_id}/call/{call['id']}",
            feedback_type=f"{RUNNABLE_PREFIX}.{ref.name}", runnable_ref=req.action_ref,
            payload={"output": _contains_words(words, output)}, wb_user_id=req.wb_user_id,
        )  # fmt: skip
        docs.append(feedback_doc(feedback))
    await state_of(request).store.put_docs("feedback", docs)
    return ok({})
