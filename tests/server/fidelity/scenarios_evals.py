"""The differential scenario, evaluation families: predictions and scores recorded through
weave's REST API, standalone and inside an evaluation run, read back as predictions,
scores, calls and feedback."""

from __future__ import annotations

from typing import Any

from tests.server.fidelity.compare import Step

EP = "fid/evals"
MODEL_SOURCE = "class Echo:\n    def predict(self, q):\n        return q\n"


def _run_id(c: dict[str, Any]) -> str:
    return c["evals.run_create"]["evaluation_run_id"]


def _pred(label: str) -> Any:
    return lambda c: c[label]["prediction_id"]


def _setup() -> list[Step]:
    f = "evals"
    return [
        Step(f, "evals.model", "model_create", {"project_id": EP, "name": "Echo", "source_code": MODEL_SOURCE}),
        Step(f, "evals.scorer", "scorer_create", {"project_id": EP, "name": "Exact",
             "op_source_code": "def score(output, q):\n    return output == q\n"}),
        Step(f, "evals.evaluation", "evaluation_create", lambda c: {
            "project_id": EP, "name": "QA", "dataset": f"weave:///{EP}/object/rows:latest",
            "scorers": [c["evals.scorer"]["scorer"]]}),
        Step(f, "evals.run_create", "evaluation_run_create", lambda c: {
            "project_id": EP, "evaluation": c["evals.evaluation"]["evaluation_ref"],
            "model": c["evals.model"]["model_ref"]}),
    ]  # fmt: skip


def _predictions() -> list[Step]:
    f = "evals"
    model = lambda c: c["evals.model"]["model_ref"]  # noqa: E731
    return [
        Step(f, "evals.predict_alone", "prediction_create", lambda c: {
            "project_id": EP, "model": model(c), "inputs": {"q": "hi"}, "output": "hi"}),
        Step(f, "evals.predict_unnamed_model", "prediction_create", {
            "project_id": EP, "model": "not-a-ref", "inputs": {}, "output": {"a": [1, 2]}}),
        Step(f, "evals.predict_in_run", "prediction_create", lambda c: {
            "project_id": EP, "model": model(c), "inputs": {"q": "2+2"}, "output": 4,
            "evaluation_run_id": _run_id(c)}),
        Step(f, "evals.predict_in_run_2", "prediction_create", lambda c: {
            "project_id": EP, "model": model(c), "inputs": {"q": "3+3"}, "output": 5,
            "evaluation_run_id": _run_id(c),
            "genai_span_ref": [{"span_id": "s1", "trace_id": "t1"}]}),
        Step(f, "evals.predict_read", "prediction_read", lambda c: {
            "project_id": EP, "prediction_id": _pred("evals.predict_alone")(c)}),
        Step(f, "evals.predict_read_in_run", "prediction_read", lambda c: {
            "project_id": EP, "prediction_id": _pred("evals.predict_in_run")(c)}),
        Step(f, "evals.predict_list", "prediction_list", {"project_id": EP}),
        Step(f, "evals.predict_list_run", "prediction_list", lambda c: {
            "project_id": EP, "evaluation_run_id": _run_id(c)}),
        Step(f, "evals.predict_list_page", "prediction_list", {"project_id": EP, "limit": 2, "offset": 1}),
        Step(f, "evals.predict_read_missing", "prediction_read", {
            "project_id": EP, "prediction_id": "0190a6a4-0000-7000-8000-0000000000aa"}),
    ]  # fmt: skip


def _scores() -> list[Step]:
    f = "evals"
    scorer = lambda c: c["evals.scorer"]["scorer"]  # noqa: E731
    return [
        Step(f, "evals.score_in_run", "score_create", lambda c: {
            "project_id": EP, "prediction_id": _pred("evals.predict_in_run")(c), "scorer": scorer(c),
            "value": True, "evaluation_run_id": _run_id(c)}),
        Step(f, "evals.score_in_run_2", "score_create", lambda c: {
            "project_id": EP, "prediction_id": _pred("evals.predict_in_run_2")(c), "scorer": scorer(c),
            "value": 0.25, "evaluation_run_id": _run_id(c)}),
        Step(f, "evals.score_alone", "score_create", lambda c: {
            "project_id": EP, "prediction_id": _pred("evals.predict_alone")(c), "scorer": scorer(c),
            "value": {"correct": False, "reason": "x"}}),
        Step(f, "evals.score_read", "score_read", lambda c: {
            "project_id": EP, "score_id": c["evals.score_in_run"]["score_id"]}),
        Step(f, "evals.score_list", "score_list", {"project_id": EP}),
        Step(f, "evals.score_list_run", "score_list", lambda c: {
            "project_id": EP, "evaluation_run_id": _run_id(c)}),
        Step(f, "evals.score_list_page", "score_list", {"project_id": EP, "limit": 1}),
        Step(f, "evals.score_feedback", "feedback_query", {
            "project_id": EP, "fields": ["feedback_type", "payload", "runnable_ref"]}),
        Step(f, "evals.score_read_missing", "score_read", {
            "project_id": EP, "score_id": "0190a6a4-0000-7000-8000-0000000000bb"}),
    ]  # fmt: skip


def _finish_and_delete() -> list[Step]:
    f = "evals"
    return [
        Step(f, "evals.predict_finish_alone", "prediction_finish", lambda c: {
            "project_id": EP, "prediction_id": _pred("evals.predict_alone")(c)}),
        Step(f, "evals.predict_finish", "prediction_finish", lambda c: {
            "project_id": EP, "prediction_id": _pred("evals.predict_in_run")(c)}),
        Step(f, "evals.predict_read_finished", "prediction_read", lambda c: {
            "project_id": EP, "prediction_id": _pred("evals.predict_in_run")(c)}),
        Step(f, "evals.run_finish", "evaluation_run_finish", lambda c: {
            "project_id": EP, "evaluation_run_id": _run_id(c)}),
        Step(f, "evals.run_read", "evaluation_run_read", lambda c: {
            "project_id": EP, "evaluation_run_id": _run_id(c)}),
        Step(f, "evals.calls", "calls_query_stats", {"project_id": EP}),
        Step(f, "evals.score_delete", "score_delete", lambda c: {
            "project_id": EP, "score_ids": [c["evals.score_alone"]["score_id"]]}),
        Step(f, "evals.score_list_after", "score_list", {"project_id": EP}),
        Step(f, "evals.predict_delete", "prediction_delete", lambda c: {
            "project_id": EP, "prediction_ids": [_pred("evals.predict_unnamed_model")(c)]}),
        Step(f, "evals.predict_list_after", "prediction_list", {"project_id": EP}),
    ]  # fmt: skip


def evals() -> list[Step]:
    return [*_setup(), *_predictions(), *_scores(), *_finish_and_delete()]
