"""weave 0.54.0's own batching client → ``engine relay`` → a trace server that is down.

The relay answers weave as soon as the calls are in the engine's ring, so weave finishes
while the upstream refuses connections; the engine retries until the upstream is back, and
every call ends up stored (the upstream merges by call id, so a repeat is harmless).
"""

import os
import subprocess
import sys
import textwrap

import pytest

from tests.faultserver import FaultServer
from tests.relay.harness import metrics, relay_subprocess, wait_until

pytestmark = [pytest.mark.peers, pytest.mark.integration]

try:
    import weave  # noqa: F401
except Exception:  # the peers extra is optional
    pytestmark.append(pytest.mark.skip(reason="weave (the peers extra) is not importable"))

N_CALLS = 120
PROJECT = "ent/relay"
_CLIENT = textwrap.dedent(
    """
    import datetime, sys
    from weave.trace_server_bindings.remote_http_trace_server import RemoteHTTPTraceServer

    url, project, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    server = RemoteHTTPTraceServer(url, should_batch=True)
    server.set_auth(("api", "placeholder-key"))
    utc = datetime.timezone.utc
    for i in range(n):
        call_id = f"0190a0b0-0000-7000-8000-{i:012d}"
        trace_id = f"0190a0b0-0000-7000-9000-{i:012d}"
        started = datetime.datetime.now(utc)
        server.call_start({"start": {"project_id": project, "id": call_id, "trace_id": trace_id,
                                     "op_name": "predict", "started_at": started,
                                     "attributes": {}, "inputs": {"i": i}}})
        server.call_end({"end": {"project_id": project, "id": call_id, "trace_id": trace_id,
                                 "started_at": started, "ended_at": datetime.datetime.now(utc),
                                 "output": i * 2, "summary": {}}})
    server.get_call_processor().stop_accepting_new_work_and_flush_queue()
    print("flushed", flush=True)
    """
)
CALL_IDS = {f"0190a0b0-0000-7000-8000-{i:012d}" for i in range(N_CALLS)}


def _weave_env(use_calls_complete: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "WEAVE_", "WF_"))}
    env.update(WEAVE_USE_CALLS_COMPLETE="true" if use_calls_complete else "false",
               WANDB_ERROR_REPORTING="false", NO_PROXY="127.0.0.1,localhost")
    return env


@pytest.mark.parametrize("use_calls_complete", [True, False], ids=["complete", "upsert_batch"])
def test_calls_sent_while_upstream_is_down_are_all_stored_once_it_returns(use_calls_complete):
    with FaultServer(seed=7) as upstream, relay_subprocess(
        upstream.url, "--backoff-max-ms", "300", "--delivery-deadline-s", "90",
    ) as (relay_url, _):  # fmt: skip
        upstream.down()
        client = subprocess.run(
            [sys.executable, "-c", _CLIENT, relay_url, PROJECT, str(N_CALLS)],
            env=_weave_env(use_calls_complete), capture_output=True, text=True, timeout=100,
        )  # fmt: skip
        assert client.returncode == 0 and "flushed" in client.stdout, client.stderr
        # the outage is real: the engine keeps failing to reach the upstream while it is down
        assert wait_until(lambda: metrics(relay_url)["engine_retries_total"] >= 3, 60)
        assert upstream.stored_ids() == set()
        upstream.up()
        assert upstream.wait_for(
            lambda: all(upstream.is_complete(PROJECT, cid) for cid in CALL_IDS), 60)
    assert upstream.stored_ids(PROJECT) == CALL_IDS
