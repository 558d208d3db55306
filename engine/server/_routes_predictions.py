"""weave's prediction and score API (``/v2/{entity}/{project}/predictions…``, ``…/scores…``),
as views over calls, the way weave's server records them:

- a prediction is a ``<model name>.predict`` call marked ``prediction`` (with the model
  ref, and the evaluation run when given), started and ended at once with the output. In
  an evaluation run it sits under an ``Evaluation.predict_and_score`` call (child of the
  run) whose inputs are the evaluation, the model and the example;
- a score is a ``<scorer name>.score`` call marked ``score`` (prediction id, scorer ref,
  run), whose output is the value; in a run it is a sibling of its prediction. The value
  is also stored as runnable feedback (``wandb.runnable.<scorer name>``) on the
  prediction call, where weave's UI shows scores;
- finishing a prediction ends its ``predict_and_score`` call with the prediction's output,
  each scorer's value by scorer name and the model latency, which is what finishing the
  run averages.

Reads and lists answer 404 / skip calls that are not predictions (or scores); deleting
removes the prediction (or score) calls and their descendants.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from engine.server._body import ApiError, path_project
from engine.server._eval_calls import (
    PREDICT_AND_SCORE_OP,
    PREDICT_AND_SCORE_OP_TS,
    decoded,
    find_call,
    is_marked,
    marked,
    marks,
    now,
    op_is,
    op_ref,
    ref_name,
    store_of,
)
from engine.server._feedback_rules import RUNNABLE
from engine.server._reply import not_found, ok, page_of, stream_jsonl
from engine.server._routes_feedback import feedback_doc
from engine.server._routes_v2 import int_param
from engine.server._state import state_of
from engine.server._store import CallRow, CallsQuery
from engine.wire._base import Request
from engine.wire._codec import uuid7
from engine.wire.calls import EndedCallSchemaForInsert, StartedCallSchemaForInsert
from engine.wire.feedback import FeedbackCreateReq
from engine.wire.query import CallsFilter

routes = web.RouteTableDef()
_PREDICT_SOURCE = "def predict(model, **inputs):\n    ...  # engine serve: a recorded prediction\n"
_SCORE_SOURCE = "def score(scorer, **inputs):\n    ...  # engine serve: a recorded score\n"
_PREDICT_AND_SCORE_SOURCE = "def predict_and_score(evaluation, example):\n    ...  # engine serve placeholder\n"


class GenaiSpanRef(Request, kw_only=True):
    span_id: str
    trace_id: str


class PredictionCreateReq(Request, kw_only=True):
    model: str
    inputs: dict[str, Any]
    output: Any
    evaluation_run_id: str | None = None
    genai_span_ref: list[GenaiSpanRef] | None = None


class ScoreCreateReq(Request, kw_only=True):
    prediction_id: str
    scorer: str
    value: Any
    evaluation_run_id: str | None = None


def _start(project_id: str, call_id: str, op_name: str, *, trace_id: str, parent_id: str | None,
           weave: dict[str, Any], inputs: dict[str, Any]) -> StartedCallSchemaForInsert:  # fmt: skip
    return StartedCallSchemaForInsert(
        project_id=project_id, id=call_id, trace_id=trace_id, parent_id=parent_id,
        op_name=op_name, started_at=now(), attributes={"weave": weave}, inputs=inputs,
    )  # fmt: skip


def _end(project_id: str, call_id: str, output: Any) -> EndedCallSchemaForInsert:
    return EndedCallSchemaForInsert(project_id=project_id, id=call_id, ended_at=now(),
                                    output=output, summary={})  # fmt: skip


async def _call_of(request: web.Request, project_id: str, call_id: str, mark: str) -> CallRow:
    call = await find_call(store_of(request), project_id, call_id)
    if call is None or not is_marked(call, mark):
        raise not_found(f"{mark} {call_id!r} in {project_id!r}")
    return call


def _listing(request: web.Request, mark: str, answer: Any) -> Any:
    run_id = request.query.get("evaluation_run_id")
    query = marked(mark, **({"evaluation_run_id": run_id} if run_id else {}))
    limit, offset = page_of(int_param(request, "limit"), int_param(request, "offset"))
    calls = CallsQuery(project_id=path_project(request), query=query, limit=limit, offset=offset)

    async def lines():
        async for page in store_of(request).query_calls(calls):
            yield [answer(call) for call in page]

    return stream_jsonl(request, lines())


async def _delete(request: web.Request, mark: str, param: str) -> web.Response:
    project_id, ids = path_project(request), request.query.getall(param, [])
    store = store_of(request)
    found = [call["id"] for call_id in dict.fromkeys(ids)
             if (call := await find_call(store, project_id, call_id)) and is_marked(call, mark)]  # fmt: skip
    deleted = set(await store.delete_calls(project_id, found)) if found else set()
    return ok({"num_deleted": len(deleted.intersection(found))})


# -- predictions --------------------------------------------------------------------------


def _prediction_answer(call: CallRow) -> dict[str, Any]:
    weave = marks(call)
    return {"prediction_id": call["id"], "model": weave.get("model", ""),
            "inputs": (decoded(call.get("inputs")) or {}).get("inputs") or {},
            "output": decoded(call.get("output")), "evaluation_run_id": weave.get("evaluation_run_id"),
            "wb_user_id": call.get("wb_user_id")}  # fmt: skip


async def _predict_and_score(request: web.Request, req: PredictionCreateReq, project_id: str,
                             prediction_id: str) -> StartedCallSchemaForInsert:  # fmt: skip
    """The ``predict_and_score`` call a prediction of an evaluation run sits under."""
    run_id = req.evaluation_run_id or ""
    run = await find_call(store_of(request), project_id, run_id)
    if run is None or not is_marked(run, "evaluation_run"):
        raise not_found(f"evaluation_run_id: evaluation run {run_id!r} in {project_id!r}")
    weave: dict[str, Any] = {"predict_call_id": prediction_id}
    if req.genai_span_ref is not None:
        weave["genai_span_ref"] = [msgspec.structs.asdict(ref) for ref in req.genai_span_ref]
    op = await op_ref(request, project_id, PREDICT_AND_SCORE_OP, _PREDICT_AND_SCORE_SOURCE)
    inputs = {"self": (decoded(run.get("inputs")) or {}).get("self"), "model": req.model,
              "example": req.inputs}  # fmt: skip
    return _start(project_id, uuid7(), op, trace_id=run_id, parent_id=run_id, weave=weave,
                  inputs=inputs)  # fmt: skip


@routes.post("/v2/{entity}/{project}/predictions")
async def prediction_create(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, PredictionCreateReq)
    project_id, prediction_id = path_project(request), uuid7()
    starts, trace_id, parent_id = [], prediction_id, None
    if req.evaluation_run_id:
        parent = await _predict_and_score(request, req, project_id, prediction_id)
        starts.append(parent)
        trace_id, parent_id = req.evaluation_run_id, parent.id
    model_name = ref_name(req.model) or "Model"
    op = await op_ref(request, project_id, f"{model_name}.predict", _PREDICT_SOURCE)
    weave = {"prediction": "true", "model": req.model}
    if req.evaluation_run_id:
        weave["evaluation_run_id"] = req.evaluation_run_id
    starts.append(_start(project_id, prediction_id, op, trace_id=trace_id, parent_id=parent_id,
                         weave=weave, inputs={"self": req.model, "inputs": req.inputs}))  # fmt: skip
    await store_of(request).insert_calls(starts, [_end(project_id, prediction_id, req.output)], [])
    return ok({"prediction_id": prediction_id})


@routes.get("/v2/{entity}/{project}/predictions/{prediction_id}")
async def prediction_read(request: web.Request) -> web.Response:
    call = await _call_of(request, path_project(request), request.match_info["prediction_id"], "prediction")
    return ok(_prediction_answer(call))


@routes.get("/v2/{entity}/{project}/predictions")
async def prediction_list(request: web.Request) -> web.StreamResponse:
    return await _listing(request, "prediction", _prediction_answer)


@routes.delete("/v2/{entity}/{project}/predictions")
async def prediction_delete(request: web.Request) -> web.Response:
    return await _delete(request, "prediction", "prediction_ids")


async def _scores_by_scorer(request: web.Request, project_id: str, parent_id: str) -> dict[str, Any]:
    """Each score call under ``parent_id``: scorer name -> value."""
    query = CallsQuery(project_id=project_id, filter=CallsFilter(parent_ids=[parent_id]),
                       query=marked("score"))  # fmt: skip
    scores: dict[str, Any] = {}
    async for page in store_of(request).query_calls(query):
        for call in page:
            value = decoded(call.get("output"))
            if value is not None:
                scores[ref_name(str(marks(call).get("scorer", ""))) or "unknown"] = value
    return scores


@routes.post("/v2/{entity}/{project}/predictions/{prediction_id}/finish")
async def prediction_finish(request: web.Request) -> web.Response:
    """Ends the prediction's ``predict_and_score`` call (when it has one) with the
    prediction's output, its scores and the model latency. The prediction call itself
    ended when it was created and keeps its output."""
    project_id = path_project(request)
    call = await _call_of(request, project_id, request.match_info["prediction_id"], "prediction")
    parent = await find_call(store_of(request), project_id, call.get("parent_id") or "")
    if parent is None or not op_is(parent.get("op_name"), PREDICT_AND_SCORE_OP, PREDICT_AND_SCORE_OP_TS):
        return ok({"success": True})
    latency = None
    if call.get("ended_at") is not None:
        latency = {"mean": (call["ended_at"] - call["started_at"]).total_seconds()}
    output = {"output": decoded(call.get("output")),
              "scores": await _scores_by_scorer(request, project_id, parent["id"]),
              "model_latency": latency}  # fmt: skip
    await store_of(request).insert_calls([], [_end(project_id, parent["id"], output)], [])
    return ok({"success": True})


# -- scores -------------------------------------------------------------------------------


def _score_answer(call: CallRow) -> dict[str, Any]:
    weave = marks(call)
    value = decoded(call.get("output"))
    return {"score_id": call["id"], "scorer": weave.get("scorer", ""),
            "value": 0.0 if value is None else value,
            "evaluation_run_id": weave.get("evaluation_run_id"), "wb_user_id": call.get("wb_user_id")}  # fmt: skip


def _feedback(project_id: str, req: ScoreCreateReq, scorer_name: str,
              prediction: CallRow | None) -> FeedbackCreateReq:  # fmt: skip
    """The runnable feedback on the prediction call that shows the score in weave's UI."""
    user = (prediction or {}).get("wb_user_id") or "unknown"
    return FeedbackCreateReq(
        project_id=project_id, weave_ref=f"weave:///{project_id}/call/{req.prediction_id}",
        feedback_type=f"{RUNNABLE}.{scorer_name}", payload={"output": req.value},
        runnable_ref=req.scorer, wb_user_id=user,
    )  # fmt: skip


@routes.post("/v2/{entity}/{project}/scores")
async def score_create(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, ScoreCreateReq)
    project_id, score_id = path_project(request), uuid7()
    scorer_name = ref_name(req.scorer, ("object",))
    if scorer_name is None:
        raise ApiError(400, f"scorer: {req.scorer!r} is not a weave:/// ref to a scorer object")
    store = store_of(request)
    prediction = await find_call(store, project_id, req.prediction_id)
    trace_id, parent_id = score_id, None
    if req.evaluation_run_id:
        trace_id = req.evaluation_run_id
        parent_id = (prediction or {}).get("parent_id") or req.evaluation_run_id
    weave = {"score": "true", "prediction_id": req.prediction_id, "scorer": req.scorer}
    if req.evaluation_run_id:
        weave["evaluation_run_id"] = req.evaluation_run_id
    inputs = {"self": req.scorer,
              "inputs": (decoded((prediction or {}).get("inputs")) or {}).get("inputs") or {},
              "output": decoded((prediction or {}).get("output"))}  # fmt: skip
    op = await op_ref(request, project_id, f"{scorer_name}.score", _SCORE_SOURCE)
    start = _start(project_id, score_id, op, trace_id=trace_id, parent_id=parent_id, weave=weave,
                   inputs=inputs)  # fmt: skip
    feedback = feedback_doc(_feedback(project_id, req, scorer_name, prediction))
    await store.insert_calls([start], [_end(project_id, score_id, req.value)], [])
    await store.put_docs("feedback", [feedback])
    return ok({"score_id": score_id})


@routes.get("/v2/{entity}/{project}/scores/{score_id}")
async def score_read(request: web.Request) -> web.Response:
    call = await _call_of(request, path_project(request), request.match_info["score_id"], "score")
    return ok(_score_answer(call))


@routes.get("/v2/{entity}/{project}/scores")
async def score_list(request: web.Request) -> web.StreamResponse:
    return await _listing(request, "score", _score_answer)


@routes.delete("/v2/{entity}/{project}/scores")
async def score_delete(request: web.Request) -> web.Response:
    return await _delete(request, "score", "score_ids")


# routes that take no body (weave's client sends none): whatever comes is not read
NO_BODY = (("POST", "/v2/{entity}/{project}/predictions/{prediction_id}/finish"),)
# bodies of these routes, for whoever checks them by type (tests/server/test_fuzz_routes.py)
REQUEST_TYPES = {
    ("POST", "/v2/{entity}/{project}/predictions"): PredictionCreateReq,
    ("POST", "/v2/{entity}/{project}/scores"): ScoreCreateReq,
}
