"""weave 0.54.0's ``Evaluation`` (a Dataset, an async Model that sometimes raises, a sync, an
async and a raising scorer, ``trials=2``) through the weave integration with its speedups,
against weave alone: the same calls, links, exceptions, summary, feedback and objects
(``bench.weave_eval`` compares them; ``python -m bench.weave_eval`` runs it at 1,000 rows
under several ``WEAVE_PARALLELISM``)."""

import json
import signal
import textwrap

import pytest

from bench import weave_eval
from engine.server import serve_subprocess
from tests.integrations._weaves import VERSIONS_AND_0_53_LEGACY, weave_env, weave_python
from tests.integrations.test_weave_integration import _run_program, _weave_env

pytestmark = [pytest.mark.peers, pytest.mark.integration]

try:
    import weave  # noqa: F401
except Exception:  # the peers extra is optional
    pytestmark.append(pytest.mark.skip(reason="weave (the peers extra) is not importable"))

ROWS = 100


def test_an_evaluation_stores_the_same_through_the_engine_as_with_weave_alone(tmp_path):
    stored, read, printed = {}, {}, {}
    with serve_subprocess(tmp_path / "a.db") as url_a, serve_subprocess(tmp_path / "b.db") as url_b:
        for how, url in (("alone", url_a), ("on", url_b)):
            project = f"ent/eval-{how}"
            printed[how] = weave_eval.run(url, tmp_path, how, project, ROWS, 2, None,
                                          timeout_s=120)  # fmt: skip
            assert printed[how]["engine"] == (how == "on")
            stored[how] = weave_eval.stored(url, project)
            read[how] = weave_eval.read_back(url, tmp_path, project)
    alone, engine = stored["alone"], stored["on"]
    # 2 trials of 100 rows: predict_and_score and predict each; the 3 scorers where predict
    # did not raise (n % 37 == 5: rows 5, 42, 79); evaluate and summarize once
    scored = 2 * (ROWS - 3)
    assert sum(alone["per_op"].values()) == 2 * 2 * ROWS + 3 * scored + 2, alone["per_op"]
    assert not alone["broken"] and not engine["broken"]
    # one feedback per scorer result (weave attaches it to the prediction); picky raised on
    # n % 23 == 7 (rows 7, 30, 53, 76, 99): no result there
    assert len(alone["feedback"]) == 3 * scored - 2 * 5, (len(alone["feedback"]),
                                                          printed["alone"]["log"])
    assert weave_eval.differences(alone, engine) == []
    assert read["alone"]["rows"] == ROWS and read["alone"]["model"] == ["WeaveObject", "upper"]
    assert weave_eval._same_text(read["on"], "ent/eval-on") == \
        weave_eval._same_text(read["alone"], "ent/eval-alone")
    summary = printed["on"]["summary"]
    assert weave_eval._same_text(summary, "") == weave_eval._same_text(printed["alone"]["summary"], "")
    assert summary["picky"]["true_count"] == sum(1 for n in range(ROWS) if n % 37 != 5
                                                 and n % 23 != 7 and n % 2 == 0) * 2


_FEEDBACK = textwrap.dedent(
    """
    import asyncio, json, sys, weave
    from weave.trace_server_bindings import async_batch_processor
    batches = []
    processor_fn = async_batch_processor.AsyncBatchProcessor.__init__

    def counting(self, fn, *args, **kwargs):  # what each of weave's batch processors sends
        def sent(batch):
            batches.append(len(batch))
            return fn(batch)
        processor_fn(self, sent, *args, **kwargs)

    async_batch_processor.AsyncBatchProcessor.__init__ = counting
    weave.init(sys.argv[1])

    @weave.op
    def exact(n: int, output: int) -> bool:
        return output == n

    @weave.op
    def predict(n: int) -> int:
        return n

    rows = [{"n": i} for i in range(30)]
    asyncio.run(weave.Evaluation(dataset=rows, scorers=[exact]).evaluate(predict))
    weave.finish()
    print(json.dumps({"batched": sum(batches)}))
    """
)


@VERSIONS_AND_0_53_LEGACY
def test_scorer_feedback_goes_in_batches_as_weave_sends_it(tmp_path, weave_minor):
    """weave alone queues each scorer result's feedback and sends it in batches from a
    thread of its own; through the integration (weave's server built with batching off, for
    the calls) each one was a request of its own made by weave's pool, which fell behind
    an evaluation: 5,752 of them, ~10 ms each against engine serve, left a 1,000-row
    evaluation's flush waiting 15-20 s (``python -m bench.weave_eval``); against a distant
    server, minutes. Now the integration batches feedback as weave does."""
    program = tmp_path / "feedback.py"
    program.write_text(_FEEDBACK)
    with serve_subprocess(tmp_path / "t.db") as url:
        env = {**_weave_env(url, str(tmp_path), enable_env=True), **weave_env(weave_minor)}
        result = _run_program([weave_python(weave_minor), str(program), "ent/feedback"], env)
        assert result.returncode == 0, result.stderr[-3000:]
        feedback = weave_eval._post_lines(url, "/feedback/query",
                                          {"project_id": "ent/feedback", "limit": 1000})
    assert len(feedback) == 30
    assert json.loads(result.stdout.splitlines()[-1]) == {"batched": 30}


def test_feedback_still_queued_at_sigterm_is_sent(tmp_path):
    """SIGTERM ends the process without weave's exit flush: the feedback weave's processor
    still queues (it sends once a second) is sent by the engine's SIGTERM handler."""
    program = tmp_path / "feedback.py"
    program.write_text(_FEEDBACK.replace(
        "weave.finish()", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"))
    with serve_subprocess(tmp_path / "t.db") as url:
        result = _run_program([weave_python("0.54"), str(program), "ent/feedback"],
                              _weave_env(url, str(tmp_path), enable_env=True))
        feedback = weave_eval._post_lines(url, "/feedback/query",
                                          {"project_id": "ent/feedback", "limit": 1000})
    assert result.returncode == -signal.SIGTERM, result.stderr[-3000:]
    assert "still pending" not in result.stderr, result.stderr[-3000:]
    assert len(feedback) == 30
