"""weave's evaluation-run API (``/v2/{entity}/{project}/evaluation_runs…``): a run is an
``Evaluation.evaluate`` call marked in ``attributes.weave`` (``evaluation_run``,
``evaluation``, ``model``) with the evaluation and model refs as inputs, as weave's
server records one; reading, listing and deleting a run read and delete that call.

Finishing a run ends it: its output holds the mean of each scorer's numeric scores over
its ``Evaluation.predict_and_score`` children (and of numeric model outputs), the same
output goes to an ``Evaluation.summarize`` child call, and ``summary`` is the one given.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

import msgspec
from aiohttp import web

from engine.server._body import path_project
from engine.server._calls_view import call_view
from engine.server._eval_calls import (
    PREDICT_AND_SCORE_OP,
    PREDICT_AND_SCORE_OP_TS,
    find_call,
    op_is,
)
from engine.server._reply import not_found, ok, page_of, stream_jsonl
from engine.server._routes_v2 import int_param
from engine.server._state import state_of
from engine.server._store import CallsQuery
from engine.wire._base import Request
from engine.wire._codec import uuid7
from engine.wire.calls import EndedCallSchemaForInsert, StartedCallSchemaForInsert
from engine.wire.query import CallsFilter

routes = web.RouteTableDef()
RUN_OP = "Evaluation.evaluate"
SUMMARIZE_OP = "Evaluation.summarize"


class RunCreateReq(Request, kw_only=True):
    evaluation: str
    model: str
    source_evaluation_run_id: str | None = None


class RunFinishReq(Request, kw_only=True):
    summary: dict[str, Any] | None = None


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _decoded(value: Any) -> Any:
    return msgspec.json.decode(value) if isinstance(value, msgspec.Raw) else value


def _status(call: dict[str, Any]) -> str:
    if call.get("ended_at") is None:
        return "running"
    return "completed" if call.get("exception") is None else "failed"


def _run_answer(call: dict[str, Any]) -> dict[str, Any]:
    call = call_view(call)
    marks = (_decoded(call.get("attributes")) or {}).get("weave") or {}
    inputs = _decoded(call.get("inputs")) or {}
    return {
        "evaluation_run_id": call["id"],
        "evaluation": marks.get("evaluation") or inputs.get("self") or "",
        "model": marks.get("model") or inputs.get("model") or "",
        "status": _status(call), "started_at": call["started_at"],
        "finished_at": call.get("ended_at"), "summary": call["summary"],
        "source_evaluation_run_id": marks.get("source_evaluation_run_id"),
    }  # fmt: skip


async def _run_call(request: web.Request, project_id: str, run_id: str) -> dict[str, Any]:
    call = await find_call(state_of(request).store, project_id, run_id)
    if call is None:
        raise not_found(f"evaluation run {run_id!r} in {project_id!r}")
    return call


@routes.post("/v2/{entity}/{project}/evaluation_runs")
async def evaluation_run_create(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, RunCreateReq)
    project_id, run_id = path_project(request), uuid7()
    marks = {"evaluation_run": "true", "evaluation": req.evaluation, "model": req.model}
    if req.source_evaluation_run_id:
        marks["source_evaluation_run_id"] = req.source_evaluation_run_id
    start = StartedCallSchemaForInsert(
        project_id=project_id, id=run_id, trace_id=run_id, op_name=RUN_OP, started_at=_now(),
        attributes={"weave": marks}, inputs={"self": req.evaluation, "model": req.model},
    )  # fmt: skip
    await state_of(request).store.insert_calls([start], [], [])
    return ok({"evaluation_run_id": run_id})


@routes.get("/v2/{entity}/{project}/evaluation_runs/{evaluation_run_id}")
async def evaluation_run_read(request: web.Request) -> web.Response:
    call = await _run_call(request, path_project(request), request.match_info["evaluation_run_id"])
    return ok(_run_answer(call))


def _in(field: str, values: list[str]) -> dict[str, Any]:
    return {"$in": [{"$getField": field}, [{"$literal": v} for v in values]]}


@routes.get("/v2/{entity}/{project}/evaluation_runs")
async def evaluation_run_list(request: web.Request) -> web.StreamResponse:
    conditions = [{"$eq": [{"$getField": "attributes.weave.evaluation_run"}, {"$literal": "true"}]}]
    for param, field in (("evaluations", "attributes.weave.evaluation"),
                         ("models", "attributes.weave.model"), ("evaluation_run_ids", "id")):  # fmt: skip
        values = request.query.getall(param, None)
        if values:
            conditions.append(_in(field, values))
    limit, offset = page_of(int_param(request, "limit"), int_param(request, "offset"))
    query = CallsQuery(project_id=path_project(request), query={"$expr": {"$and": conditions}},
                       limit=limit, offset=offset)  # fmt: skip

    async def lines():
        async for page in state_of(request).store.query_calls(query):
            yield [_run_answer(call) for call in page]

    return await stream_jsonl(request, lines())


@routes.delete("/v2/{entity}/{project}/evaluation_runs")
async def evaluation_run_delete(request: web.Request) -> web.Response:
    run_ids = request.query.getall("evaluation_run_ids", [])
    await state_of(request).store.delete_calls(path_project(request), run_ids)
    return ok({"num_deleted": len(run_ids)})


def _means(children: list[dict[str, Any]]) -> dict[str, Any]:
    """Per scorer, the mean of its numeric scores; then the mean numeric model output."""
    scores: dict[str, list[float]] = {}
    outputs: list[float] = []
    for call in children:
        output = _decoded(call.get("output"))
        if not op_is(call["op_name"], PREDICT_AND_SCORE_OP, PREDICT_AND_SCORE_OP_TS) or not isinstance(output, dict):
            continue
        if isinstance(output.get("output"), (int, float)) and not isinstance(output["output"], bool):
            outputs.append(float(output["output"]))
        for name, value in (output.get("scores") or {}).items():
            numbers = scores.setdefault(name, [])
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                numbers.append(float(value))
    means: dict[str, Any] = {name: {"mean": sum(v) / len(v)} for name, v in scores.items() if v}
    if outputs:
        means["output"] = {"mean": sum(outputs) / len(outputs)}
    return means


@routes.post("/v2/{entity}/{project}/evaluation_runs/{evaluation_run_id}/finish")
async def evaluation_run_finish(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, RunFinishReq)
    project_id, run_id = path_project(request), request.match_info["evaluation_run_id"]
    store = state_of(request).store
    run = await _run_call(request, project_id, run_id)
    children = [c async for page in store.query_calls(
        CallsQuery(project_id=project_id, filter=CallsFilter(parent_ids=[run_id]))) for c in page]  # fmt: skip
    means = _means(children)
    summarize_id = uuid7()
    evaluation = (_decoded(run.get("inputs")) or {}).get("self")
    start = StartedCallSchemaForInsert(
        project_id=project_id, id=summarize_id, trace_id=run_id, parent_id=run_id,
        op_name=SUMMARIZE_OP, started_at=_now(), attributes={}, inputs={"self": evaluation},
    )  # fmt: skip
    ends = [EndedCallSchemaForInsert(project_id=project_id, id=summarize_id, ended_at=_now(),
                                     output=means, summary={}),
            EndedCallSchemaForInsert(project_id=project_id, id=run_id, ended_at=_now(),
                                     output=means, summary=req.summary or {})]  # fmt: skip
    await store.insert_calls([start], ends, [])
    return ok({"success": True})


# bodies of these routes, for whoever checks them by type (tests/server/test_fuzz_routes.py)
REQUEST_TYPES = {
    ("POST", "/v2/{entity}/{project}/evaluation_runs"): RunCreateReq,
    ("POST", "/v2/{entity}/{project}/evaluation_runs/{evaluation_run_id}/finish"): RunFinishReq,
}
