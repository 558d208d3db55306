"""weave 0.54.0 ``@weave.op`` in forked ``multiprocessing.Pool`` workers, stored on ``engine serve``.

Measured peer behaviour (docs/peers-weave-0.54.md §5): weave alone stores none of the calls
made in forked workers (their deferred sends never run and its sender thread does not exist
there). With ``engine.integrations.weave`` installed every call is stored.
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
except Exception:  # the peers extra is optional
    pytestmark.append(pytest.mark.skip(reason="weave (the peers extra) is not importable"))

N_CALLS = 30
_PROGRAM = textwrap.dedent(
    """
    import multiprocessing, sys

    project, how = sys.argv[1], sys.argv[2]
    if how == "install":
        import engine.integrations.weave
        engine.integrations.weave.install()
    elif how == "env":
        import engine.integrations.weave  # ENGINE_WEAVE=1 installs on import
    import weave

    @weave.op
    def square(x: int) -> int:
        return x * x

    if __name__ == "__main__":
        client = weave.init(project)
        with multiprocessing.get_context("fork").Pool(2) as pool:
            print(sum(pool.map(square, range(int(sys.argv[3])))), flush=True)
        client.flush()
        print("flushed", flush=True)
    """
)


def _weave_env(url: str, home: str, enable_env: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("WANDB_", "WEAVE_", "WF_", "ENGINE_"))}
    env.update(WF_TRACE_SERVER_URL=url, WANDB_BASE_URL=url, HOME=home,
               WANDB_API_KEY="0123456789abcdef0123456789abcdef01234567",
               WEAVE_PRINT_CALL_LINK="false", WANDB_ERROR_REPORTING="false",
               NO_PROXY="127.0.0.1,localhost")
    if enable_env:
        env["ENGINE_WEAVE"] = "1"
    return env


def _stored_op_calls(url: str, project_id: str) -> list[dict]:
    body = msgspec.json.encode({"project_id": project_id})
    request = urllib.request.Request(url + "/calls/stream_query", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=30) as resp:
        calls = [msgspec.json.decode(line) for line in resp.read().splitlines()]
    return [c for c in calls if "square" in c["op_name"]]


def _run(tmp_path, how: str) -> list[dict]:
    project = f"ent/pool-{how}"
    with serve_subprocess(tmp_path / "traces.db") as url:
        program = tmp_path / "program.py"
        program.write_text(_PROGRAM)
        result = subprocess.run(
            [sys.executable, str(program), project, how, str(N_CALLS)],
            env=_weave_env(url, str(tmp_path), enable_env=how == "env"),
            capture_output=True, text=True, timeout=100,
        )  # fmt: skip
        assert result.returncode == 0 and "flushed" in result.stdout, result.stderr[-3000:]
        return _stored_op_calls(url, project)


@pytest.mark.parametrize("how", ["install", "env"])
def test_pool_worker_calls_are_all_stored_with_the_integration(tmp_path, how):
    calls = _run(tmp_path, how)
    assert len({c["id"] for c in calls}) == N_CALLS == len(calls)
    assert all(c["ended_at"] and c["output"] == c["inputs"]["x"] ** 2 for c in calls)


def test_weave_alone_loses_pool_worker_calls(tmp_path):
    assert len(_run(tmp_path, "none")) < N_CALLS
