"""The trace browser's evaluations and compare pages over 2 weave-shaped evaluation runs of
N predictions with OUT_KB answers: seconds to show, bytes of stream_query read (headless
Chromium's performance entries), 3 times. Needs chromium and chromedriver (scripts/test
installs them). ``N=2000 OUT_KB=20 DB=/tmp/ui.db python bench/ui_compare_pages.py``
(a DB that exists is reused as it is)."""

import json
import os
import tempfile
import time
import urllib.request
from pathlib import Path

from engine.server import serve_subprocess
from tests.server.harness import end, start, upsert_batch
from tests.server.test_trace_browser import CHROMEDRIVER, CHROMIUM, FLAGS, _wait

P = "acme/big"
N = int(os.environ.get("N", 2000))
OUT = int(os.environ.get("OUT_KB", 20)) * 1000


def post(url, path, body):
    req = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())


def seed(url):
    ev = post(
        url,
        "/obj/create",
        {
            "obj": {
                "project_id": P,
                "object_id": "big-eval",
                "val": {
                    "_type": "Evaluation",
                    "_class_name": "Evaluation",
                    "_bases": ["Evaluation", "Object", "BaseModel"],
                    "name": "big-eval",
                },
            }
        },
    )["digest"]
    evref = f"weave:///{P}/object/big-eval:{ev}"
    op_eval, op_ps = (
        f"weave:///{P}/op/Evaluation.evaluate:abc",
        f"weave:///{P}/op/Evaluation.predict_and_score:def",
    )
    for r in range(2):
        m = post(
            url,
            "/obj/create",
            {
                "obj": {
                    "project_id": P,
                    "object_id": "QA",
                    "val": {
                        "_type": "QA",
                        "_class_name": "QA",
                        "_bases": ["Model", "Object", "BaseModel"],
                        "model_name": f"gpt-{r}",
                    },
                }
            },
        )["digest"]
        mref = f"weave:///{P}/object/QA:{m}"
        root, tr = f"run{r}", f"trace-run{r}"
        items = [
            (
                "start",
                start(
                    root,
                    trace_id=tr,
                    op_name=op_eval,
                    t_s=r * 10000,
                    project_id=P,
                    inputs={"self": evref, "model": mref},
                ),
            )
        ]
        for i in range(N):
            c = f"r{r}-ps{i}"
            items += [
                (
                    "start",
                    start(
                        c,
                        trace_id=tr,
                        parent_id=root,
                        op_name=op_ps,
                        t_s=r * 10000 + i,
                        project_id=P,
                        inputs={
                            "self": evref,
                            "model": mref,
                            "example": {"question": f"q{i}", "expected": f"A{i}"},
                        },
                    ),
                ),
                (
                    "end",
                    end(
                        c,
                        t_s=r * 10000 + i + 0.5,
                        project_id=P,
                        output={
                            "output": {"answer": (f"A{i} " if (i + r) % 3 else "B ") + "x" * OUT},
                            "scores": {"exact": {"correct": bool((i + r) % 3)}},
                            "model_latency": 0.5,
                        },
                    ),
                ),
            ]
            if len(items) > 400:
                post(url, "/call/upsert_batch", upsert_batch(*items))
                items = []
        items.append(
            (
                "end",
                end(
                    root,
                    t_s=r * 10000 + N + 1,
                    project_id=P,
                    output={
                        "exact": {"correct": {"true_count": 1, "true_fraction": 0.5}},
                        "model_latency": {"mean": 0.5},
                    },
                    summary={"status_counts": {"success": N, "error": 0}},
                ),
            )
        )
        post(url, "/call/upsert_batch", upsert_batch(*items))


def fetched(d, path):
    return d.execute_script(
        "return performance.getEntriesByType('resource').filter((e) => new URL(e.name).pathname === arguments[0]).reduce((n, e) => n + e.decodedBodySize, 0)",
        path,
    )


def durations(d):
    return d.execute_script(
        "return performance.getEntriesByType('resource').filter((e) => e.name.includes('stream_query')).map((e) => Math.round(e.responseEnd - e.startTime))"
    )


def main():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    db = Path(os.environ.get("DB", os.path.join(tempfile.gettempdir(), "engine-ui-compare.db")))
    fresh = not db.exists()
    with serve_subprocess(db) as url:
        if fresh:
            t = time.monotonic()
            seed(url)
            print(f"seeded in {time.monotonic() - t:.1f}s")
        o = webdriver.ChromeOptions()
        o.binary_location = CHROMIUM
        for f in FLAGS:
            o.add_argument(f)
        o.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='engine-ui-chromium-')}")
        d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=o)
        d.set_page_load_timeout(300)
        try:
            for _ in range(3):
                t = time.monotonic()
                d.get(f"{url}/{P}/weave/evaluations")
                _wait(d, "#range", "1–2 of 2 evaluation runs", 600)
                e_s = time.monotonic() - t
                e_b = fetched(d, "/calls/stream_query")
                r_b = fetched(d, "/refs/read_batch")
                t = time.monotonic()
                d.get(f"{url}/{P}/weave/evaluations/compare?calls=run1,run0")
                _wait(d, "#differing", f"of {N:,} examples differ", 600)
                c_s = time.monotonic() - t
                c_b = fetched(d, "/calls/stream_query") + fetched(d, "/ui/calls/stream_query")
                cr_b = fetched(d, "/refs/read_batch")
                txt = d.find_element("id", "differing").text + f" fetch ms {durations(d)}"
                print(
                    f"evaluations: {e_s:.2f}s stream_query {e_b / 1e6:.3f} MB refs {r_b / 1e6:.3f} MB | compare: {c_s:.2f}s stream_query {c_b / 1e6:.2f} MB refs {cr_b / 1e6:.3f} MB | {txt}",
                    flush=True,
                )
        finally:
            d.quit()


if __name__ == "__main__":
    main()
