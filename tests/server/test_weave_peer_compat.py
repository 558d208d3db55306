"""weave 0.54.0's own client, unmodified, against ``engine serve``: every call stored once.

Each run is a fresh Python process (weave keeps global client state) pointed at our server
for both the trace API and the W&B API, so ``weave.init`` resolves its project through our
GraphQL answers and nothing leaves the machine.
"""

import os
import subprocess
import sys
import textwrap
import urllib.request

import msgspec
import pytest

from engine.server import serve_subprocess

pytestmark = [pytest.mark.peers, pytest.mark.integration]

try:
    import weave  # noqa: F401
except Exception:  # the peers extra is optional; any import failure means "not installed"
    pytestmark.append(pytest.mark.skip(reason="weave (the peers extra) is not importable"))

N_CALLS = 25
_CLIENT = textwrap.dedent(
    """
    import sys
    import weave

    client = weave.init(sys.argv[1])

    @weave.op
    def predict(question: str) -> str:
        return question.upper()

    for i in range(int(sys.argv[2])):
        predict(f"question {i}")
    client.flush()
    print("flushed")
    """
)


def _weave_env(url: str, home: str, use_calls_complete: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "WEAVE_", "WF_"))}
    env.update(
        WF_TRACE_SERVER_URL=url,
        WANDB_BASE_URL=url,
        WANDB_API_KEY="0123456789abcdef0123456789abcdef01234567",
        WEAVE_USE_CALLS_COMPLETE="true" if use_calls_complete else "false",
        WEAVE_PRINT_CALL_LINK="false",
        HOME=home,  # no ~/.netrc or wandb settings of the machine leak in
        NO_PROXY="127.0.0.1,localhost",
    )
    return env


def _stored_ids(url: str, project_id: str) -> list[str]:
    body = msgspec.json.encode({"project_id": project_id})
    request = urllib.request.Request(url + "/calls/stream_query", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=30) as resp:
        return [msgspec.json.decode(line)["id"] for line in resp.read().splitlines()]


@pytest.mark.parametrize("use_calls_complete", [True, False], ids=["complete", "upsert_batch"])
def test_weave_client_calls_are_all_stored_exactly_once(tmp_path, use_calls_complete):
    project = "ent/complete" if use_calls_complete else "ent/upsert"
    with serve_subprocess(tmp_path / "traces.db") as url:
        result = subprocess.run(
            [sys.executable, "-c", _CLIENT, project, str(N_CALLS)],
            env=_weave_env(url, str(tmp_path), use_calls_complete),
            capture_output=True, text=True, timeout=100,
        )  # fmt: skip
        assert result.returncode == 0 and "flushed" in result.stdout, result.stderr
        ids = _stored_ids(url, project)
        with urllib.request.urlopen(url + "/stats", timeout=30) as resp:
            stats = msgspec.json.decode(resp.read())
    assert len(ids) == N_CALLS and len(set(ids)) == N_CALLS
    # the path weave took: complete calls, or starts and ends through upsert_batch
    if use_calls_complete:
        assert stats["calls_complete"] >= N_CALLS and stats["calls_started"] == 0
    else:
        assert stats["calls_started"] >= N_CALLS and stats["calls_complete"] == 0


_SCORED = textwrap.dedent(
    """
    import asyncio, json, sys
    import weave

    client = weave.init(sys.argv[1])

    class Exact(weave.Scorer):
        @weave.op
        def score(self, output):
            return {"ok": output == "A"}

    @weave.op
    def predict(question: str) -> str:
        return question.upper()

    predict("b")
    _, call = predict.call("a")
    scorer = Exact()
    asyncio.run(call.apply_scorer(scorer))
    client.flush()
    ref = weave.publish(scorer).uri()
    print(json.dumps({"scored": call.id,
                      "by_name": [c.id for c in client.get_calls(scored_by="Exact")],
                      "by_ref": [c.id for c in client.get_calls(scored_by=ref)],
                      "by_other": [c.id for c in client.get_calls(scored_by="Other")]}))
    """
)


def test_get_calls_scored_by_finds_what_a_scorer_scored(tmp_path):
    """weave's ``client.get_calls(scored_by=…)`` filters on ``feedback.[wandb.runnable.<name>]``
    fields (a 422 "unknown call field" before): by scorer name and by the scorer's ref."""
    with serve_subprocess(tmp_path / "traces.db") as url:
        result = subprocess.run(
            [sys.executable, "-c", _SCORED, "ent/scored"],
            env=_weave_env(url, str(tmp_path), use_calls_complete=True),
            capture_output=True, text=True, timeout=100,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    got = msgspec.json.decode(result.stdout.strip().splitlines()[-1])
    assert got["by_name"] == [got["scored"]] and got["by_ref"] == [got["scored"]]
    assert got["by_other"] == []
