"""weave 0.54.0's ``Evaluation`` (a Dataset, an async Model that sometimes raises, a sync, an
async and a raising scorer, ``trials=2``) through the weave integration with its speedups,
against weave alone: the same calls, links, exceptions, summary, feedback and objects
(``bench.weave_eval`` compares them; ``python -m bench.weave_eval`` runs it at 1,000 rows
under several ``WEAVE_PARALLELISM``)."""

import pytest

from bench import weave_eval
from engine.server import serve_subprocess

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
    assert len(alone["feedback"]) == 3 * scored - 2 * 5, len(alone["feedback"])
    assert weave_eval.differences(alone, engine) == []
    assert read["alone"]["rows"] == ROWS and read["alone"]["model"] == ["WeaveObject", "upper"]
    assert weave_eval._same_text(read["on"], "ent/eval-on") == \
        weave_eval._same_text(read["alone"], "ent/eval-alone")
    summary = printed["on"]["summary"]
    assert weave_eval._same_text(summary, "") == weave_eval._same_text(printed["alone"]["summary"], "")
    assert summary["picky"]["true_count"] == sum(1 for n in range(ROWS) if n % 37 != 5
                                                 and n % 23 != 7 and n % 2 == 0) * 2
