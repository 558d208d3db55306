"""Predictions and scores through weave 0.54.0's own client against a real ``engine serve``:
what is written reads back, as predictions, scores, the calls weave's server records for
them and the feedback weave's UI shows scores with."""

from __future__ import annotations

import pytest

from tests.server.test_client_surface import client  # noqa: F401 -- the fixture

pytestmark = [pytest.mark.integration, pytest.mark.peers]

P = "evals/proj"


def _status(call) -> int:
    from weave.vendor.weave_server_sdk import APIStatusError

    try:
        call()
    except APIStatusError as exc:
        return exc.status_code
    return 200


@pytest.fixture
def run(client):  # noqa: F811
    """A model, a scorer, an evaluation and a run of it: ``(model ref, scorer ref, run id)``."""
    model = client.model_create({"project_id": P, "name": "Echo", "source_code": "class E: pass\n"})
    scorer = client.scorer_create({"project_id": P, "name": "Exact", "op_source_code": "def score(o): ...\n"})
    evaluation = client.evaluation_create({"project_id": P, "name": "QA", "scorers": [scorer.scorer],
                                           "dataset": f"weave:///{P}/object/rows:latest"})  # fmt: skip
    created = client.evaluation_run_create(
        {"project_id": P, "evaluation": evaluation.evaluation_ref, "model": model.model_ref}
    )
    return model.model_ref, scorer.scorer, created.evaluation_run_id


def test_a_prediction_reads_back_and_lists_by_run(client, run):  # noqa: F811
    model, _, run_id = run
    alone = client.prediction_create({"project_id": P, "model": model, "inputs": {"q": "a"}, "output": "A"})
    in_run = client.prediction_create({"project_id": P, "model": model, "inputs": {"q": "b"}, "output": 2,
                                       "evaluation_run_id": run_id})  # fmt: skip
    read = client.prediction_read({"project_id": P, "prediction_id": in_run.prediction_id})
    assert (read.model, read.inputs, read.output, read.evaluation_run_id) == (model, {"q": "b"}, 2, run_id)
    read = client.prediction_read({"project_id": P, "prediction_id": alone.prediction_id})
    assert (read.inputs, read.output, read.evaluation_run_id) == ({"q": "a"}, "A", None)
    listed = [p.prediction_id for p in client.prediction_list({"project_id": P})]
    assert listed == [alone.prediction_id, in_run.prediction_id]
    by_run = [p.prediction_id for p in client.prediction_list({"project_id": P, "evaluation_run_id": run_id})]
    assert by_run == [in_run.prediction_id]
    page = [p.prediction_id for p in client.prediction_list({"project_id": P, "limit": 1, "offset": 1})]
    assert page == [in_run.prediction_id]
    # the run's call is no prediction; a prediction in a run nobody created is a 404
    assert _status(lambda: client.prediction_read({"project_id": P, "prediction_id": run_id})) == 404
    assert _status(lambda: client.prediction_create({"project_id": P, "model": model, "inputs": {},
                                                     "output": 1, "evaluation_run_id": "nope"})) == 404  # fmt: skip


def test_a_prediction_in_a_run_is_recorded_as_weave_records_it(client, run):  # noqa: F811
    model, scorer, run_id = run
    pred = client.prediction_create({"project_id": P, "model": model, "inputs": {"q": "b"}, "output": 2,
                                     "evaluation_run_id": run_id})  # fmt: skip
    calls = {c.id: c for c in client.calls_query({"project_id": P}).calls}
    prediction = calls[pred.prediction_id]
    parent = calls[prediction.parent_id]
    assert prediction.op_name.startswith(f"weave:///{P}/op/echo.predict:")
    assert prediction.attributes["weave"] == {"prediction": "true", "model": model, "evaluation_run_id": run_id}
    assert parent.op_name.startswith(f"weave:///{P}/op/evaluation.predict_and_score:")
    assert (parent.parent_id, parent.trace_id, parent.inputs["example"]) == (run_id, run_id, {"q": "b"})
    assert parent.ended_at is None  # until the prediction is finished


def test_scores_finish_the_prediction_and_the_run(client, run):  # noqa: F811
    model, scorer, run_id = run
    preds = [client.prediction_create({"project_id": P, "model": model, "inputs": {"q": i}, "output": i,
                                       "evaluation_run_id": run_id}).prediction_id for i in (1, 3)]  # fmt: skip
    scores = [client.score_create({"project_id": P, "prediction_id": p, "scorer": scorer, "value": v,
                                   "evaluation_run_id": run_id}).score_id for p, v in zip(preds, (1.0, 0.5))]  # fmt: skip
    read = client.score_read({"project_id": P, "score_id": scores[1]})
    assert (read.scorer, read.value, read.evaluation_run_id) == (scorer, 0.5, run_id)
    assert [s.score_id for s in client.score_list({"project_id": P, "evaluation_run_id": run_id})] == scores
    feedback = client.feedback_query({"project_id": P}).result
    assert [(f["weave_ref"], f["feedback_type"], f["payload"]) for f in feedback] == [
        (f"weave:///{P}/call/{p}", "wandb.runnable.exact", {"output": v}) for p, v in zip(preds, (1.0, 0.5))]
    for p in preds:
        assert client.prediction_finish({"project_id": P, "prediction_id": p}).success
    client.evaluation_run_finish({"project_id": P, "evaluation_run_id": run_id})
    calls = {c.id: c for c in client.calls_query({"project_id": P}).calls}
    parent = calls[calls[preds[0]].parent_id]
    assert parent.output["output"] == 1 and parent.output["scores"] == {"exact": 1.0}
    assert calls[scores[0]].parent_id == parent.id  # a score sits beside its prediction
    assert calls[run_id].output == {"exact": {"mean": 0.75}, "output": {"mean": 2.0}}
    # finishing kept the prediction's own output
    assert client.prediction_read({"project_id": P, "prediction_id": preds[0]}).output == 1


def test_deletes_remove_only_predictions_and_scores(client, run):  # noqa: F811
    model, scorer, run_id = run
    pred = client.prediction_create({"project_id": P, "model": model, "inputs": {}, "output": 0}).prediction_id
    score = client.score_create({"project_id": P, "prediction_id": pred, "scorer": scorer, "value": 0}).score_id
    assert client.score_delete({"project_id": P, "score_ids": [score, run_id]}).num_deleted == 1
    assert list(client.score_list({"project_id": P})) == []
    assert client.prediction_delete({"project_id": P, "prediction_ids": [pred, run_id]}).num_deleted == 1
    assert list(client.prediction_list({"project_id": P})) == []
    assert client.evaluation_run_read({"project_id": P, "evaluation_run_id": run_id}).evaluation_run_id == run_id


def test_a_score_names_its_scorer_by_ref(client, run):  # noqa: F811
    from weave.vendor.weave_server_sdk import APIStatusError

    model, _, _ = run
    pred = client.prediction_create({"project_id": P, "model": model, "inputs": {}, "output": 0}).prediction_id
    with pytest.raises(APIStatusError) as caught:
        client.score_create({"project_id": P, "prediction_id": pred, "scorer": "exact", "value": 1})
    assert caught.value.status_code == 400 and "scorer" in str(caught.value.body)
