"""One weave 0.54.0 program using weave's tracing features -- generators, async generators,
async ops, display names computed from the call, input/output post-processing, an op that
raises, ``weave.attributes``, ``weave.thread``, ``EvaluationLogger`` -- run twice against the
same ``engine serve``: with weave alone, and through the engine (``ENGINE_WEAVE=1``). Both
store the same calls (a differential check of the integration, not of weave)."""

import json
import re
import textwrap
import urllib.request

import pytest

from engine.server import serve_subprocess
from tests.integrations._weaves import VERSIONS, weave_python
from tests.integrations.test_weave_integration import _run_program, _weave_env

pytestmark = [pytest.mark.peers, pytest.mark.integration]

try:
    import weave  # noqa: F401
except Exception:  # the peers extra is optional
    pytestmark.append(pytest.mark.skip(reason="weave (the peers extra) is not importable"))

_PROGRAM = textwrap.dedent(
    """
    import asyncio, sys, weave
    weave.init(sys.argv[1])

    @weave.op
    def gen(n: int):
        for i in range(n):
            yield i

    @weave.op
    async def agen(n: int):
        for i in range(n):
            yield i * 2

    @weave.op
    async def slow_add(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    @weave.op(call_display_name=lambda call: f"shown-{call.inputs['x']}")
    def named(x: int) -> int:
        return x

    def hide(inputs):
        return {k: ("***" if k == "secret" else v) for k, v in inputs.items()}

    @weave.op(postprocess_inputs=hide, postprocess_output=lambda o: {"wrapped": o})
    def post(secret: str, x: int) -> int:
        return x * 3

    @weave.op
    def fails(x):
        raise ValueError(f"bad {x}")

    @weave.op
    def parent(x):
        with weave.attributes({"tag": "a", "n": 1}):
            named(x)
        return [v for v in gen(3)]

    async def main():
        return [v async for v in agen(3)], await slow_add(1, 2)

    parent(7)
    assert asyncio.run(main()) == ([0, 2, 4], 3)
    post("pw", 2)
    try:
        fails(1)
    except ValueError:
        pass
    with weave.thread("t-1"):
        named(9)
    log = weave.EvaluationLogger(model="m", dataset="d")
    pred = log.log_prediction(inputs={"q": 1}, output="A")
    pred.log_score("correct", True)
    pred.finish()
    log.log_summary({"acc": 1.0})
    integration = sys.modules.get("engine.integrations.weave")
    print("through the engine:", bool(integration and integration.installed_engine()))
    weave.finish()
    print("done")
    """
)


def _stored(url: str, project: str) -> list[str]:
    """Each call as weave stored it, with what differs between two runs made equal: the
    project in refs, digests, ids, the run's random name and weave's own attributes."""
    body = json.dumps({"project_id": project}).encode()
    with urllib.request.urlopen(urllib.request.Request(url + "/calls/stream_query", data=body),
                                timeout=30) as resp:
        calls = [json.loads(line) for line in resp.read().splitlines()]
    by_id = {c["id"]: c for c in calls}
    rows = []
    for call in calls:
        parent = by_id.get(call["parent_id"]) if call.get("parent_id") else None
        row = {k: call.get(k) for k in ("op_name", "display_name", "inputs", "output",
                                        "exception", "thread_id")}
        row["attributes"] = {k: v for k, v in (call.get("attributes") or {}).items() if k != "weave"}
        row["parent_op"] = parent and parent["op_name"]
        row["is_turn"] = call.get("turn_id") == call["id"]
        text = json.dumps(row, sort_keys=True).replace(project, "P")
        text = re.sub(r"(weave:///P/(?:op|object)/[^:\"]+):[A-Za-z0-9]+", r"\1", text)
        text = re.sub(r"weave:///P/call/[0-9a-f-]+", "CALL", text)
        text = re.sub(r"eval-\d{4}-\d\d-\d\d-[a-z]+-[a-z]+", "EVAL-NAME", text)
        rows.append(text)
    return sorted(rows)


@VERSIONS
def test_weave_features_store_the_same_calls_through_the_engine(tmp_path, weave_minor):
    program = tmp_path / "program.py"
    program.write_text(_PROGRAM)
    stored = {}
    with serve_subprocess(tmp_path / "t.db") as url:
        for how in ("alone", "engine"):
            env = _weave_env(url, str(tmp_path), enable_env=how == "engine")
            env["WEAVE_SERVER_CACHE_DIR"] = str(tmp_path / f"cache-{how}")
            result = _run_program([weave_python(weave_minor), str(program), f"acme/features-{how}"],
                                  env)
            assert result.returncode == 0 and "done" in result.stdout, result.stderr[-3000:]
            assert f"through the engine: {how == 'engine'}" in result.stdout
            assert "is deprecated" not in result.stderr  # looking at weave warns nobody
            stored[how] = _stored(url, f"acme/features-{how}")
    assert len(stored["alone"]) == 13, stored["alone"]
    assert stored["engine"] == stored["alone"]
    calls = "\n".join(stored["engine"])  # (weave 0.54.0 stores an async generator's output as null)
    for seen in ('"display_name": "shown-7"', '"secret": "***"', '"wrapped": 6',
                 "ValueError", '"thread_id": "t-1"', '"tag": "a"', '"output": [0, 1, 2]',
                 "Evaluation.evaluate"):
        assert seen in calls, seen
