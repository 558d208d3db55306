"""The trace browser of ``engine serve`` in a real headless Chromium (Debian's, driven by
Selenium through its chromedriver): the projects page, the calls list with paging and
filters, a call opened from the link weave 0.54.0 itself builds, objects and tables, and
the evaluations of weave 0.54.0's own `Evaluation` side by side.

Screenshots go to tmp_path; with ENGINE_TEST_SCREENSHOTS=DIR they also go to DIR (that is
how docs/trace-browser.png is made: ENGINE_TEST_SCREENSHOTS=docs scripts/test -k browser).
"""

import json
import os
import shutil
import subprocess
import sys
import urllib.request

import pytest

from engine.producer._engine import Engine
from engine.server import serve_subprocess
from tests.server.harness import basic_auth, end, start, store_earlier, upsert_batch

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROJECT = "acme/browser-demo"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,900")
ROOTS = 120  # more than two pages of 50


def _trace(url: str) -> str:
    """ROOTS evaluations of 3 calls each (every 7th fails); returns a failed root's id."""
    failed = None
    with Engine(url=url, project=PROJECT) as eng:
        tracer = eng.producer()
        for i in range(ROOTS):
            try:
                with tracer.call("Evaluation.predict_and_score", inputs={"example": i}) as root:
                    with tracer.call("openai.chat.completions.create",
                                     inputs={"messages": [{"role": "user", "content": f"q{i}"}]}) as llm:
                        llm.output = {"choices": [{"message": {"content": f"answer {i}"}}]}
                        llm.summary = {"usage": {"gpt-4o-mini": {"prompt_tokens": 400,
                                                                 "completion_tokens": 60}}}
                    with tracer.call("exact_match_scorer", inputs={"output": f"answer {i}"}) as score:
                        score.output = {"correct": i % 2 == 0}
                    root.summary = {"usage": llm.summary["usage"], "weave": {"costs": {
                        "gpt-4o-mini": {"prompt_tokens_total_cost": 0.00006,
                                        "completion_tokens_total_cost": 0.000036}}}}
                    if i % 7 == 3:
                        failed = failed or root.id
                        raise ValueError(f"example {i}: no ground truth")
                    root.output = {"score": 1.0}
            except ValueError:
                pass
        assert eng.flush(timeout_s=60)
    return failed


def _post(url: str, path: str, body: dict, key: str | None = None) -> dict:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = basic_auth("api", key)
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _dataset(url: str) -> None:
    rows = [{"question": f"q{i}", "expected": f"answer {i}"} for i in range(3)]
    digest = _post(url, "/table/create", {"table": {"project_id": PROJECT, "rows": rows}})["digest"]
    _post(url, "/obj/create", {"obj": {"project_id": PROJECT, "object_id": "eval-questions",
                                       "val": {"_type": "Dataset", "_class_name": "Dataset",
                                               "rows": f"weave:///{PROJECT}/table/{digest}"}}})


def _weave_link(base_url: str, call_id: str) -> str:
    """The link weave 0.54.0 prints for a call, built by weave's own code."""
    entity, project = PROJECT.split("/")
    code = (f"from weave.trace import urls; print(urls.redirect_call({entity!r}, {project!r}, "
            f"{call_id!r}))")
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"),
           "WANDB_BASE_URL": base_url}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env, check=True)
    return out.stdout.strip()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER), \
        "scripts/test installs chromium and chromium-driver (apt); run it as root"
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium fetch a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(autouse=True)
def _own_console_log(request):
    """Each test checks the console messages of its own pages: the module's one browser
    keeps an earlier test's (a page that read a deleted object logs its 404)."""
    if "browser" in request.fixturenames:
        request.getfixturevalue("browser").get_log("browser")
    yield


def _wait(driver, css: str, text: str | None = None, timeout_s: float = 60):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def found(d):
        nodes = d.find_elements(By.CSS_SELECTOR, css)
        hit = [n for n in nodes if text is None or text in n.text]
        return hit[0] if hit else False

    # a node found may be replaced before its text is read: the page rendered again
    return WebDriverWait(driver, timeout_s, poll_frequency=0.05,
                         ignored_exceptions=(StaleElementReferenceException,)
                         ).until(found, f"{css} with {text!r}")


def _rows(driver) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#calls tbody tr")


def _screenshot(driver, tmp_path, name: str) -> None:
    path = tmp_path / name
    driver.save_screenshot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    target = os.environ.get("ENGINE_TEST_SCREENSHOTS")
    if target:
        shutil.copy(path, os.path.join(target, name))


def _no_console_errors(driver) -> None:
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_trace_browser_lists_pages_filters_and_opens_weave_links(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    with serve_subprocess(tmp_path / "traces.db") as url:
        failed_root = _trace(url)
        _dataset(url)

        _post(url, "/project/ttl_settings/update", {"project_id": PROJECT, "retention_days": 3650})
        browser.get(url + "/")
        _wait(browser, "#projects", PROJECT)
        listed = browser.find_element(By.ID, "projects").text
        assert f"{ROOTS * 3:,}" in listed and "3,650 days" in listed  # its retention

        browser.get(f"{url}/{PROJECT}/weave")  # weave's "View Weave data at" link
        _wait(browser, "#range", f"1–50 of {ROOTS}")
        assert len(_rows(browser)) == 50
        first = _rows(browser)[0].text
        assert "Evaluation.predict_and_score" in first and " ms" in first
        assert "460" in first and "$0.0001" in first  # tokens and cost rolled up on the root
        _screenshot(browser, tmp_path, "trace-browser.png")
        browser.find_element(By.ID, "next").click()
        _wait(browser, "#range", f"51–100 of {ROOTS}")
        browser.find_element(By.ID, "next").click()
        _wait(browser, "#range", f"101–{ROOTS} of {ROOTS}")
        assert len(_rows(browser)) == ROOTS - 100 and not browser.find_element(By.ID, "next").is_enabled()

        Select(browser.find_element(By.ID, "f-status")).select_by_value("error")
        browser.find_element(By.CSS_SELECTOR, "#filters button").click()
        errors = sum(1 for i in range(ROOTS) if i % 7 == 3)
        _wait(browser, "#range", f"1–{errors} of {errors}")
        assert all("error" in row.text for row in _rows(browser))

        browser.find_element(By.ID, "f-roots").click()  # every call, not only roots
        Select(browser.find_element(By.ID, "f-status")).select_by_value("")
        browser.find_element(By.ID, "f-op").send_keys("openai")
        browser.find_element(By.CSS_SELECTOR, "#filters button").click()
        _wait(browser, "#range", f"of {ROOTS} calls")
        assert "460" in _rows(browser)[0].text  # tokens: 400 prompt + 60 completion

        browser.get(_weave_link(url, failed_root))
        _wait(browser, "#call-title", "Evaluation.predict_and_score")
        assert browser.current_url.endswith(f"/{PROJECT}/r/call/{failed_root}")
        tree = browser.find_element(By.ID, "tree").text
        assert "openai.chat.completions.create" in tree and "exact_match_scorer" in tree
        assert "no ground truth" in browser.find_element(By.ID, "exception").text
        assert "example: 3" in browser.find_element(By.ID, "inputs").text
        _screenshot(browser, tmp_path, "trace-browser-call.png")

        browser.find_element(By.LINK_TEXT, "openai.chat.completions.create").click()
        _wait(browser, "#call-title", "openai.chat.completions.create")
        output = browser.find_element(By.ID, "output")
        assert "content: \"answer" in output.text
        output.find_element(By.TAG_NAME, "summary").click()  # collapsible: one click folds it
        assert "answer" not in output.text and "{1}" in output.text
        assert "460" in browser.find_element(By.ID, "facts").text

        browser.find_element(By.LINK_TEXT, "Objects").click()
        _wait(browser, "#objects", "eval-questions")
        browser.find_element(By.LINK_TEXT, "Tables").click()
        _wait(browser, "#tables", "eval-questions").find_element(By.CSS_SELECTOR, "tr.row").click()
        _wait(browser, "#table-rows", "answer 2")
        _no_console_errors(browser)


# the two scorers of the evaluation programs below
_SCORERS = """
@weave.op
def exact(expected: str, output: dict) -> dict:
    return {"correct": output["answer"] == expected}

@weave.op
def length(output: dict) -> float:
    return float(len(output["answer"]))
"""

_EVALUATIONS = """
import asyncio, weave
weave.init("acme/evals")

class QA(weave.Model):
    model_name: str
    temperature: float = 0.0

    @weave.op
    def predict(self, question: str) -> dict:
        if question == "q5" and self.temperature > 0.5:
            raise RuntimeError("the model timed out")
        return {"answer": question.upper() if self.temperature < 0.5 else question}

""" + _SCORERS + """

rows = [{"question": f"q{i}", "expected": f"Q{i}" if i % 4 else "x"} for i in range(8)]
dataset = weave.Dataset(name="qa-small", rows=rows)
for name in ("qa-eval", "qa-eval-strict"):
    evaluation = weave.Evaluation(name=name, dataset=dataset, scorers=[exact, length])
    for model in (QA(model_name="gpt-x"), QA(model_name="gpt-y", temperature=0.9)):
        if name == "qa-eval-strict" and model.model_name == "gpt-y":
            continue
        asyncio.run(evaluation.evaluate(model))
"""


_TRIALS = """
import asyncio, collections, weave
weave.init("acme/trials")
seen = collections.Counter()

class Bot(weave.Model):
    flaky: bool

    @weave.op
    def predict(self, question: str) -> dict:
        seen[self.flaky, question] += 1
        # trials run concurrently, in any order: the flaky bot is wrong in exactly one of
        # each example's three
        wrong = self.flaky and seen[self.flaky, question] == 2
        return {"answer": "wrong" if wrong else question.upper()}

""" + _SCORERS + """

dataset = weave.Dataset(name="four", rows=[{"question": f"q{i}", "expected": f"Q{i}"} for i in range(4)])
evaluation = weave.Evaluation(name="trials-eval", dataset=dataset, scorers=[exact, length], trials=3)
for flaky in (False, True):
    asyncio.run(evaluation.evaluate(Bot(flaky=flaky)))
"""


def _run_weave(url: str, tmp_path, script: str) -> str:
    (tmp_path / "home").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "WEAVE_", "WF_", "ENGINE_"))}
    env.update(WF_TRACE_SERVER_URL=url, WANDB_BASE_URL=url, HOME=str(tmp_path / "home"),
               WANDB_API_KEY="0123456789abcdef0123456789abcdef01234567",
               WEAVE_PRINT_CALL_LINK="false", WANDB_ERROR_REPORTING="false",
               NO_PROXY="127.0.0.1,localhost",
               # weave caches the objects it created on disk, by request and not by
               # server: a shared cache would keep them from this fresh server
               WEAVE_SERVER_CACHE_DIR=str(tmp_path / "weave-cache"))
    return subprocess.run([sys.executable, "-c", script], env=env, timeout=300, check=True,
                          capture_output=True, text=True).stdout


def test_evaluations_page_shows_weave_evaluation_runs_with_their_scores(browser, tmp_path):
    """weave 0.54.0's own Evaluation, run against engine serve: one row per run with its
    evaluation, its model's settings, its calls and errors and every score of its output."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    with serve_subprocess(tmp_path / "traces.db") as url:
        _run_weave(url, tmp_path, _EVALUATIONS)

        browser.get(f"{url}/acme/evals/weave/calls")
        browser.find_element(By.LINK_TEXT, "Evaluations").click()
        _wait(browser, "#range", "1–3 of 3 evaluation runs")
        table = browser.find_element(By.ID, "evaluations")
        head = table.find_element(By.TAG_NAME, "thead").text
        for column in ("Model", "Errors", "exact\ncorrect.true_fraction", "length\nmean",
                       "model_latency\nmean"):
            assert column in head, head
        rows = [[td.text for td in r.find_elements(By.TAG_NAME, "td")][1:]
                for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
        # newest first: qa-eval-strict on gpt-x, then qa-eval on gpt-y (one prediction failed), gpt-x
        assert rows[0][1:3] == ["qa-eval-strict", "QA (model_name=gpt-x, temperature=0)"], rows[0]
        assert rows[1][1:3] == ["qa-eval", "QA (model_name=gpt-y, temperature=0.9)"], rows[1]
        assert rows[1][5] == "1" and rows[0][5] == rows[2][5] == ""  # its one failed prediction
        assert "75.0%" in rows[2] and "0.0%" in rows[1]
        _screenshot(browser, tmp_path, "trace-browser-evaluations.png")

        # the two qa-eval runs, example by example
        compare = browser.find_element(By.ID, "compare-runs")
        picks = browser.find_elements(By.CSS_SELECTOR, "#evaluations input.pick")
        picks[1].click()
        assert not compare.is_enabled()  # one run: nothing to compare yet
        picks[2].click()
        compare.click()
        _wait(browser, "#differing", "6 of 8 examples differ")
        runs = browser.find_element(By.ID, "runs").text
        assert runs.index("gpt-y") < runs.index("gpt-x")  # in the list's order, newest first
        lines = [[td.text for td in r.find_elements(By.TAG_NAME, "td")]
                 for r in browser.find_elements(By.CSS_SELECTOR, "#compare tbody tr")]
        assert len(lines) == 8
        assert "null" not in browser.find_element(By.ID, "main").text
        first = lines[0]  # q0, expected "x": neither model is right
        # gpt-y answers the question it got, which weave stores as a ref to the row's value:
        # shown as that value
        assert '"question":"q0"' in first[0] and first[1:3] == ['{"answer":"q0"}', '{"answer":"Q0"}']
        assert first[3:5] == ["✗", "✗"]  # exact.correct, gpt-y then gpt-x
        fifth = lines[5]  # q5: gpt-y failed (no output, no score), gpt-x right
        assert fifth[1] == "no output" and fifth[3:5] == ["", "✓"]
        _screenshot(browser, tmp_path, "trace-browser-compare.png")
        browser.find_element(By.ID, "f-differ").click()
        _wait(browser, "#differing", "6 of 8")
        _wait(browser, "#f-differ")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#compare tbody tr")) == 6
        assert "differ=1" in browser.current_url
        _no_console_errors(browser)
        browser.get(f"{url}/acme/evals/weave/evaluations")
        _wait(browser, "#range", "1–3 of 3 evaluation runs")

        Select(browser.find_element(By.ID, "f-eval")).select_by_value("qa-eval")
        _wait(browser, "#range", "1–2 of 2 evaluation runs")
        assert all("qa-eval" in r.text and "strict" not in r.text
                   for r in browser.find_elements(By.CSS_SELECTOR, "#evaluations tbody tr"))
        browser.find_element(By.CSS_SELECTOR, "#evaluations tbody tr").click()
        _wait(browser, "#tree", "Evaluation.predict_and_score")
        assert "Evaluation.evaluate" in browser.find_element(By.ID, "facts").text
        _no_console_errors(browser)

        # a model the server no longer has: its row names the class, the others still resolve
        body = json.dumps({"project_id": "acme/evals", "filter": {"op_names": [
            "weave:///acme/evals/op/Evaluation.evaluate:*"]}}).encode()
        with urllib.request.urlopen(urllib.request.Request(url + "/calls/stream_query", data=body),
                                    timeout=30) as resp:
            refs = {json.loads(line)["inputs"]["model"] for line in resp.read().splitlines()}
        gone = next(r for r in refs if _post(url, "/refs/read_batch", {"refs": [r]})["vals"][0]
                    ["model_name"] == "gpt-y")
        _post(url, "/obj/delete", {"project_id": "acme/evals", "object_id": "QA",
                                   "digests": [gone.rsplit(":", 1)[1]]})
        browser.get(f"{url}/acme/evals/weave/evaluations")
        _wait(browser, "#range", "1–3 of 3 evaluation runs")
        models = [r.find_elements(By.TAG_NAME, "td")[3].text
                  for r in browser.find_elements(By.CSS_SELECTOR, "#evaluations tbody tr")]
        assert models == ["QA (model_name=gpt-x, temperature=0)", "QA",
                          "QA (model_name=gpt-x, temperature=0)"], models


def test_compare_shows_every_trial_of_an_evaluation_with_trials(browser, tmp_path):
    """weave's ``Evaluation(trials=3)``: each example's three predictions per run in its
    cell, true/false scores as how many trials were true, numbers as their mean; runs differ
    where those differ."""
    from selenium.webdriver.common.by import By

    with serve_subprocess(tmp_path / "traces.db") as url:
        _run_weave(url, tmp_path, _TRIALS)
        browser.get(f"{url}/acme/trials/weave/evaluations")
        _wait(browser, "#range", "1–2 of 2 evaluation runs")
        for pick in browser.find_elements(By.CSS_SELECTOR, "#evaluations input.pick"):
            pick.click()
        browser.find_element(By.ID, "compare-runs").click()
        _wait(browser, "#differing", "4 of 4 examples differ")
        assert "several trials per example" in browser.find_element(By.ID, "trials").text
        assert browser.find_element(By.ID, "runs").text.count("Bot") == 2
        for row in browser.find_elements(By.CSS_SELECTOR, "#compare tbody tr"):
            cells = row.find_elements(By.TAG_NAME, "td")
            flaky, steady = cells[1], cells[2]  # newest first: the flaky bot ran second
            assert len(flaky.find_elements(By.CSS_SELECTOR, "div.trial")) == 3
            assert len(steady.find_elements(By.CSS_SELECTOR, "div.trial")) == 3
            outputs = flaky.text.splitlines()
            assert sum('"wrong"' in line for line in outputs) == 1, outputs
            assert not any('"wrong"' in line for line in steady.text.splitlines())
            # exact.correct (flaky, steady), then length (flaky, steady)
            assert [c.text for c in cells[3:7]] == ["2/3", "3/3", "3", "2"], [c.text for c in cells]
            assert "trials: " in cells[3].get_attribute("title")
            assert "mean of 3 trials: " in cells[5].get_attribute("title")
        _screenshot(browser, tmp_path, "trace-browser-compare-trials.png")
        _no_console_errors(browser)


_FEEDBACK = """
import asyncio, weave
weave.init("acme/feedback")

@weave.op
def ask(q: str) -> str:
    return q.upper()

@weave.op
def shouting(output: str) -> dict:
    return {"loud": output.isupper()}

_, call = ask.call("hello")
call.feedback.add_reaction("\U0001F44D")
call.feedback.add_note("checked by ann")
asyncio.run(call.apply_scorer(shouting))
weave.finish()
print(call.id)
"""


def test_a_call_page_shows_its_feedback(browser, tmp_path):
    """weave 0.54.0's own feedback on a call: a reaction, a note and a scorer's result,
    oldest first, each with its value."""
    from selenium.webdriver.common.by import By

    with serve_subprocess(tmp_path / "traces.db") as url:
        call_id = _run_weave(url, tmp_path, _FEEDBACK).strip().splitlines()[-1]
        browser.get(f"{url}/acme/feedback/r/call/{call_id}")
        _wait(browser, "#feedback", "checked by ann")
        rows = [[td.text for td in r.find_elements(By.TAG_NAME, "td")][:2]
                for r in browser.find_elements(By.CSS_SELECTOR, "#feedback tbody tr")]
        assert rows == [["reaction", "\U0001F44D"], ["note", "checked by ann"],
                        ["scorer shouting", '{"loud":true}']], rows
        _screenshot(browser, tmp_path, "trace-browser-feedback.png")
        # the calls list says which calls have feedback, and what
        browser.get(f"{url}/acme/feedback/weave/calls")
        _wait(browser, "#calls", "ask")
        listed = {r.find_element(By.TAG_NAME, "td").text: r.find_element(By.CSS_SELECTOR, "td.feedback").text
                  for r in browser.find_elements(By.CSS_SELECTOR, "#calls tbody tr")}
        assert listed["ask"] == "\U0001F44D · 1 note · 1 score", listed
        assert listed["shouting"] == ""
        # a call without feedback has no such section
        body = json.dumps({"project_id": "acme/feedback", "filter": {
            "op_names": ["weave:///acme/feedback/op/shouting:*"]}}).encode()
        with urllib.request.urlopen(urllib.request.Request(url + "/calls/stream_query", data=body),
                                    timeout=30) as resp:
            scorer_call = json.loads(resp.read().splitlines()[0])["id"]
        browser.get(f"{url}/acme/feedback/r/call/{scorer_call}")
        _wait(browser, "#call-title", "shouting")
        assert not browser.find_elements(By.ID, "feedback")
        _no_console_errors(browser)


# -- what a client may send: odd summaries, odd project names, long names, big values ----------

KEY = "browser-key-0123456789abcdef"  # rw acme/* and e/*: other/* is a 403
ODD = "acme/odd"
NAMES = {"e/p%zz": "in-percent", "e/p?x=1#frag": "in-query"}
DOTS = "e/.."  # refused at writes now: stored by an earlier version
LONG_NAME = "n" * 5000  # no space to wrap at
LIST_INTS, CHILDREN, CHILD_BYTES = 200_000, 20, 20_000
BIG_EVALS, EXAMPLES, ANSWER_CHARS = "acme/big-evals", 20, 50_000  # 2 MB of answers


def _odd_summaries() -> dict[str, dict]:
    """Summaries the server keeps as sent: costs and usage of the wrong types, and one right."""
    return {
        "costs-null": {"weave": {"costs": {"m": None}}},
        "costs-text": {"weave": {"costs": {"m": {"prompt_tokens_total_cost": "0.1"}}},
                       "usage": {"m": {"total_tokens": "12"}, "n": None}},
        "usage-text": {"usage": "many", "status_counts": "some", "weave": {"costs": [1]}},
        "good": {"usage": {"m": {"prompt_tokens": 400, "completion_tokens": 60}}, "weave": {"costs": {
            "m": {"prompt_tokens_total_cost": 0.00006, "completion_tokens_total_cost": 0.000036}}}},
    }


def _seed_odd(url: str) -> str:
    """The calls of ODD and of the NAMES projects; returns the id of the call with a big
    list in its inputs (and CHILDREN children of CHILD_BYTES of inputs each)."""
    items = []
    for n, (op, summary) in enumerate(_odd_summaries().items()):
        items += [("start", start(op, project_id=ODD, op_name=op, t_s=n)),
                  ("end", end(op, project_id=ODD, t_s=n + 1, summary=summary))]
    items += [("start", start("long", project_id=ODD, op_name="long", display_name=LONG_NAME, t_s=10)),
              ("end", end("long", project_id=ODD, t_s=11))]
    items += [("start", start("big", project_id=ODD, op_name="big", t_s=20,
                              inputs={"xs": list(range(LIST_INTS))})),
              ("end", end("big", project_id=ODD, t_s=30))]
    for i in range(CHILDREN):
        child = f"child-{i}"
        items += [("start", start(child, project_id=ODD, op_name="child", parent_id="big",
                                  trace_id="trace-big", t_s=21, inputs={"blob": "x" * CHILD_BYTES})),
                  ("end", end(child, project_id=ODD, t_s=22))]
    for project, op in NAMES.items():
        items += [("start", start(op, project_id=project, op_name=op)), ("end", end(op, project_id=project))]
    _post(url, "/call/upsert_batch", upsert_batch(*items), KEY)
    _post(url, "/call/upsert_batch", upsert_batch(*_big_answers()), KEY)
    return "big"


def _answer(run: int, i: int):
    """Example ``i``'s answer in ``run``: a long text in run 0, a long list in run 1."""
    if run == 0:
        return {"answer": f"A{i} " + "x" * ANSWER_CHARS}
    return {"tokens": list(range(i, i + ANSWER_CHARS // 5))}


def _big_answers() -> list[tuple[str, dict]]:
    """Two runs of weave's Evaluation.evaluate shape over EXAMPLES examples, each
    prediction's answer ANSWER_CHARS long; run 1 is right on every third example only."""
    ops = {op: f"weave:///{BIG_EVALS}/op/Evaluation.{op}:d1" for op in ("evaluate", "predict_and_score")}
    items = []
    for run in (0, 1):
        root = f"run-{run}"
        items.append(("start", start(root, project_id=BIG_EVALS, op_name=ops["evaluate"], t_s=run * 100,
                                     inputs={"model": f"model-{run}"})))
        for i in range(EXAMPLES):
            call = f"{root}-{i}"
            items += [("start", start(call, project_id=BIG_EVALS, op_name=ops["predict_and_score"],
                                      parent_id=root, trace_id=f"trace-{root}", t_s=run * 100 + i,
                                      inputs={"example": {"question": f"q{i}"}})),
                      ("end", end(call, project_id=BIG_EVALS, t_s=run * 100 + i + 0.5, output={
                          "output": _answer(run, i), "model_latency": 0.5,
                          "scores": {"exact": {"correct": run == 0 or i % 3 == 0}}}))]
        items.append(("end", end(root, project_id=BIG_EVALS, t_s=run * 100 + 99)))
    return items


@pytest.fixture(scope="module")
def odd_server(tmp_path_factory):
    """A server with keys, holding what _seed_odd writes: (URL with the key in it, URL)."""
    keys = tmp_path_factory.mktemp("keys") / "keys"
    keys.write_text(f"{KEY} rw acme/*,e/*\n")
    keys.chmod(0o600)
    store_earlier(keys.parent / "traces.db", DOTS, "in-dots")
    with serve_subprocess(keys.parent / "traces.db", keys_file=keys) as url:
        _seed_odd(url)
        yield url.replace("http://", f"http://api:{KEY}@"), url


def _fetched_bytes(driver, path: str) -> int:
    """Bytes of the bodies this page's requests to ``path`` received so far."""
    return driver.execute_script(
        "return performance.getEntriesByType('resource').filter((e) => new URL(e.name).pathname"
        " === arguments[0]).reduce((n, e) => n + e.decodedBodySize, 0)", path)


def _fits_the_window(driver) -> bool:
    return driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")


def test_odd_summaries_and_long_names_leave_the_calls_list_whole(browser, odd_server):
    """Costs, usage and counts of the wrong types are no numbers (never a blank page), a
    5,000-character name is cut in its column, and the list asks for what it shows: not
    the 1.3 MB of inputs of one of its calls. Opened at http://api:KEY@host/ (the key in
    the URL, as a browser's address bar takes it)."""
    from selenium.webdriver.common.by import By

    keyed, _ = odd_server
    browser.get(f"{keyed}/{ODD}/weave/calls")
    _wait(browser, "#range", "1–6 of 6")
    rows = {r.get_attribute("data-id"): [td.text for td in r.find_elements(By.TAG_NAME, "td")]
            for r in _rows(browser)}
    assert rows["good"][4:6] == ["460", "$0.0001"], rows["good"]
    for op in ("costs-null", "costs-text", "usage-text"):  # "0.1" and "12" are no numbers
        assert rows[op][:2] == [op, "success"] and rows[op][4:6] == ["", ""], rows[op]
    long_cell = browser.find_element(By.CSS_SELECTOR, "tr[data-id=long] td.op")
    assert long_cell.get_attribute("title") == LONG_NAME and _fits_the_window(browser)
    assert _fetched_bytes(browser, "/calls/stream_query") < 100_000  # not the big call's inputs
    _no_console_errors(browser)

    for op in ("costs-text", "usage-text", "long"):
        browser.get(f"{keyed}/{ODD}/r/call/{op}")
        _wait(browser, "#facts", "Status")
        assert _fits_the_window(browser), op
    assert LONG_NAME in browser.find_element(By.ID, "call-title").text
    _no_console_errors(browser)


def test_a_call_page_asks_for_its_tree_without_the_calls_inputs(browser, odd_server):
    """The call's own row is read whole; its trace's tree only as the tree shows it, not
    the CHILDREN's CHILD_BYTES of inputs each."""
    from selenium.webdriver.common.by import By

    keyed, _ = odd_server
    browser.get(f"{keyed}/{ODD}/r/call/big")
    _wait(browser, "#tree", "child")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#tree li li")) == CHILDREN
    assert _fetched_bytes(browser, "/calls/stream_query") < CHILD_BYTES
    _no_console_errors(browser)


def _cell(value) -> str:
    """A value as a compare cell shows it (app.js short(): 160 characters of its JSON)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text[:159] + "…" if len(text) > 160 else text


def test_compare_reads_the_start_of_each_answer_and_every_score(browser, odd_server):
    """Two runs of EXAMPLES predictions whose answers are ANSWER_CHARS long (2 MB in all):
    the compare page shows the same cells, and reads tens of KB, not the answers whole
    (the server cuts each answer to the 160 characters a cell shows: /ui/calls/stream_query)."""
    from selenium.webdriver.common.by import By

    keyed, _ = odd_server
    browser.get(f"{keyed}/{BIG_EVALS}/weave/evaluations/compare?calls=run-0,run-1")
    differ = EXAMPLES - len(range(0, EXAMPLES, 3))
    _wait(browser, "#differing", f"{differ} of {EXAMPLES} examples differ")
    rows = [[td.text for td in r.find_elements(By.TAG_NAME, "td")]
            for r in browser.find_elements(By.CSS_SELECTOR, "#compare tbody tr")]
    assert [r[0] for r in rows] == [_cell({"question": f"q{i}"}) for i in range(EXAMPLES)]
    assert [r[1:3] for r in rows] == [[_cell(_answer(0, i)), _cell(_answer(1, i))] for i in range(EXAMPLES)]
    assert [r[3:5] for r in rows] == [["✓", "✓" if i % 3 == 0 else "✗"] for i in range(EXAMPLES)]
    read = _fetched_bytes(browser, "/calls/stream_query") + _fetched_bytes(browser, "/ui/calls/stream_query")
    assert 0 < read < 60_000, read  # 2.2 MB when each prediction was read whole
    _no_console_errors(browser)


def test_a_big_list_is_built_when_opened_a_slice_at_a_time(browser, odd_server):
    """A list of LIST_INTS numbers is one closed node; opened, its first 500 and a button
    for the next 500."""
    from selenium.webdriver.common.by import By

    keyed, _ = odd_server
    browser.get(f"{keyed}/{ODD}/r/call/big")
    inputs = _wait(browser, "#inputs")
    assert len(inputs.find_elements(By.TAG_NAME, "li")) == 2  # the inputs and xs, closed: no items built
    inputs.find_element(By.CSS_SELECTOR, "li li details summary").click()
    more = _wait(browser, "#inputs li.more", f"… {LIST_INTS - 500:,} more: show 500")
    assert len(inputs.find_elements(By.TAG_NAME, "li")) == 2 + 500 + 1
    more.find_element(By.TAG_NAME, "button").click()
    _wait(browser, "#inputs li.more", f"… {LIST_INTS - 1000:,} more")
    assert len(inputs.find_elements(By.TAG_NAME, "li")) == 2 + 1000 + 1
    assert "999: 999" in inputs.text
    _no_console_errors(browser)


def test_project_names_with_url_characters_open_their_own_project(browser, odd_server):
    """%, ? and # in a name are encoded in every link (the projects page, the navigation,
    a call's link); a name "." or ".." cannot be in a path at all: shown, not linked."""
    from selenium.webdriver.common.by import By

    keyed, _ = odd_server
    for project in ("e/p%zz", "e/p?x=1#frag"):
        browser.get(keyed + "/")
        _wait(browser, "#projects", project)
        browser.find_element(By.LINK_TEXT, project).click()
        _wait(browser, "#calls", NAMES[project])
        assert browser.find_element(By.CSS_SELECTOR, "#nav .project").text == project
        browser.find_element(By.LINK_TEXT, NAMES[project]).click()
        _wait(browser, "#call-title", NAMES[project])
        browser.find_element(By.LINK_TEXT, "Calls").click()
        _wait(browser, "#calls", NAMES[project])
    browser.get(keyed + "/")
    dots = _wait(browser, "#projects .unlinked", DOTS)
    assert "cannot be part of a link" in dots.get_attribute("title")
    assert not browser.find_elements(By.LINK_TEXT, DOTS)
    browser.get(f"{keyed}/e/p%zz/weave/calls")  # a stray % as typed: the name as it stands
    _wait(browser, "#calls", NAMES["e/p%zz"])
    _no_console_errors(browser)


def test_a_key_refused_for_a_project_shows_the_servers_reason(browser, odd_server):
    from selenium.webdriver.common.by import By

    keyed, _ = odd_server
    browser.get(f"{keyed}/other/p/weave/calls")
    error = _wait(browser, "#error", "HTTP 403")
    assert "other/p" in error.text and "API key" in error.text, error.text
    assert "needs an API key" not in error.text
    assert browser.find_element(By.ID, "keyform").is_displayed()  # another key may do


# -- behind a reverse proxy at a path prefix (engine serve --root-path; docs/serve.md) ----------

PREFIXED = "acme/p"


def _trace_small(url: str) -> str:
    """Two root calls, the second with two children, written to ``url``; its id."""
    with Engine(url=url, project=PREFIXED) as eng:
        tracer = eng.producer()
        with tracer.call("load", inputs={"n": 1}) as first:
            first.output = "loaded"
        with tracer.call("evaluate", inputs={"n": 2}) as root:
            for name in ("predict", "score"):
                with tracer.call(name, inputs={"of": name}) as child:
                    child.output = f"{name} done"
            root.output = {"score": 1.0}
        assert eng.flush(timeout_s=60)
    return root.id


def _browse_prefixed(browser, base: str, root_id: str, whole: bool = True) -> None:
    """The calls list at ``base``, a call opened from it (``whole``: a link in its tree
    followed, back twice, the navigation's links, the link weave prints for a call): every
    URL of the page under ``base``."""
    from selenium.webdriver.common.by import By

    browser.get(f"{base}/{PREFIXED}/weave/calls")
    _wait(browser, "#range", "1–2 of 2 calls")
    browser.find_element(By.LINK_TEXT, "evaluate").click()
    _wait(browser, "#call-title", "evaluate")
    assert browser.current_url == f"{base}/{PREFIXED}/r/call/{root_id}"
    assert "predict" in browser.find_element(By.ID, "tree").text
    if not whole:
        return
    browser.find_element(By.LINK_TEXT, "score").click()
    _wait(browser, "#call-title", "score")
    assert browser.current_url.startswith(f"{base}/{PREFIXED}/r/call/")
    assert "score done" in browser.find_element(By.ID, "output").text
    browser.back()
    _wait(browser, "#call-title", "evaluate")
    browser.back()
    _wait(browser, "#range", "1–2 of 2 calls")
    assert browser.current_url == f"{base}/{PREFIXED}/weave/calls"
    browser.find_element(By.LINK_TEXT, "Objects").click()
    _wait(browser, "#main", "No objects in this project.")
    assert browser.current_url == f"{base}/{PREFIXED}/weave/objects"
    browser.find_element(By.CSS_SELECTOR, "a.brand").click()
    _wait(browser, "#projects", PREFIXED)
    assert browser.current_url == f"{base}/"
    browser.find_element(By.LINK_TEXT, PREFIXED).click()
    _wait(browser, "#range", "1–2 of 2 calls")
    # weave prints {WANDB_BASE_URL}/{entity}/{project}/r/call/{id} (its own code builds it
    # in the first test of this file); with WANDB_BASE_URL at the proxy's prefix:
    browser.get(f"{base}/{PREFIXED}/r/call/{root_id}")
    _wait(browser, "#call-title", "evaluate")


def test_the_trace_browser_behind_a_reverse_proxy_at_a_path_prefix(browser, tmp_path):
    """engine serve --root-path /engine behind a proxy that strips /engine (nginx's
    ``proxy_pass http://up/;``), with calls written through the proxy: the page, its API
    calls, links and history all go through the prefix. The same server behind a proxy
    that keeps the prefix, and at its own URL, with the prefix and without."""
    from tests.server.reverse_proxy import ReverseProxy

    with serve_subprocess(tmp_path / "traces.db", flags=("--root-path", "/engine")) as url, \
            ReverseProxy(url, "/engine") as proxy:
        base = proxy.url + "/engine"
        root_id = _trace_small(base)
        _browse_prefixed(browser, base, root_id)
        assert proxy.paths and all(asked.startswith("/engine/") for asked, _ in proxy.paths)
        assert {"/ui/app.js", "/calls/stream_query", "/call/read"} <= {sent for _, sent in proxy.paths}

        with ReverseProxy(url, "/engine", strip=False) as keeping:
            _browse_prefixed(browser, keeping.url + "/engine", root_id, whole=False)
            assert keeping.paths and all(asked == sent for asked, sent in keeping.paths)
        _browse_prefixed(browser, url + "/engine", root_id, whole=False)  # the server's own URL
        browser.get(f"{url}/{PREFIXED}/weave/calls")  # and without the prefix
        _wait(browser, "#range", "1–2 of 2 calls")
        _no_console_errors(browser)


def test_without_root_path_the_trace_browser_behind_a_prefix_loads_nothing(browser, tmp_path):
    """What --root-path is for: behind the same proxy, the page of a server without it asks
    for its script at the host's root, past the proxy's prefix, and shows nothing."""
    from selenium.webdriver.common.by import By

    from tests.server.reverse_proxy import ReverseProxy

    with serve_subprocess(tmp_path / "traces.db") as url, ReverseProxy(url, "/engine") as proxy:
        browser.get(f"{proxy.url}/engine/{PREFIXED}/weave/calls")
        _wait(browser, "#main", "Loading…")
        assert browser.execute_script("return document.readyState") == "complete"
        assert not browser.find_elements(By.ID, "range")
        missing = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert any(f"{proxy.url}/ui/app.js" in m and "404" in m for m in missing), missing
