"""Retention end to end: weave 0.54.0's client sets a project's TTL through a real
``engine serve``, which deletes the calls past it (and, with ``--retention-days``, those
of every project without its own) while it keeps serving."""

from __future__ import annotations

import datetime as dt
import os
import time
import urllib.request

import pytest

from engine.server._subprocess import _serve_argv, spawn_listening, stop_server
from engine.wire import uuid7
from tests.server.serve_process import get, post, stored_ids

pytestmark = [pytest.mark.integration]

KEPT, DEFAULTED, OWN = "ret/kept", "ret/defaulted", "ret/own"
NOW = dt.datetime.now(dt.timezone.utc)


def _calls(project: str, days_ago: list[int]) -> tuple[list[dict], dict[int, str]]:
    calls, ids = [], {}
    for days in days_ago:
        call_id = ids[days] = uuid7()
        started = NOW - dt.timedelta(days=days, minutes=1)
        calls.append({"project_id": project, "id": call_id, "trace_id": call_id, "op_name": "op",
                      "started_at": started.isoformat(), "ended_at": started.isoformat(),
                      "attributes": {}, "inputs": {"days": days}, "output": days, "summary": {}})
    return calls, ids


@pytest.fixture
def server(tmp_path):
    def start(*extra: str):
        argv = _serve_argv(tmp_path / "t.db", "sqlite", None, None) + list(extra)
        proc, url = spawn_listening(argv)
        started.append(proc)
        return url

    started: list = []
    yield start
    for proc in started:
        stop_server(proc)


def _wait_for(check, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while not (result := check()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return result


def test_weave_client_sets_a_project_retention_and_the_server_deletes_past_it(server):
    from weave.trace_server_bindings.remote_http_trace_server import RemoteHTTPTraceServer

    url = server("--retention-days", "60", "--retention-interval-s", "0.3")
    client = RemoteHTTPTraceServer(url, should_batch=False)
    client._stainless_client = client._stainless_client.copy(max_retries=0)
    try:
        # the server's default until a project has its own; null goes back to the default
        assert client.project_ttl_settings_read({"project_id": OWN}).retention_days == 60
        assert client.project_ttl_settings_update({"project_id": OWN, "retention_days": 10}
                                                  ).retention_days == 10  # fmt: skip
        assert client.project_ttl_settings_read({"project_id": OWN}).retention_days == 10
        assert client.project_ttl_settings_update({"project_id": KEPT, "retention_days": 3650,
                                                   "wb_user_id": "u"}).retention_days == 3650  # fmt: skip
    finally:
        client._stainless_client.close()

    ages = [1, 5, 20, 90, 400]
    ids = {}
    for project in (KEPT, DEFAULTED, OWN):
        calls, ids[project] = _calls(project, ages)
        status, answer, _ = post(url, f"/v2/{project}/calls/complete", {"batch": calls})
        assert status == 200, answer
    # 10 days: 1 and 5 stay; 60 days by default: 1, 5, 20; 3650 days: all
    want = {OWN: [1, 5], DEFAULTED: [1, 5, 20], KEPT: ages}
    want_ids = {p: sorted(ids[p][d] for d in days) for p, days in want.items()}
    assert _wait_for(lambda: {p: sorted(stored_ids(url, p)) for p in want} == want_ids), {
        p: sorted(stored_ids(url, p)) for p in want}
    # weave's call_read answers when a call expires (its start + the retention in force)
    kept_id = ids[OWN][1]
    read = post(url, "/call/read", {"project_id": OWN, "id": kept_id})[1]["call"]
    started = dt.datetime.fromisoformat(read["started_at"].replace("Z", "+00:00"))
    assert dt.datetime.fromisoformat(read["expire_at"].replace("Z", "+00:00")) == started + dt.timedelta(days=10)
    # the trace browser's projects page says how long each project's calls are kept
    listed = {p["project_id"]: p["retention_days"] for p in get(url, "/ui/projects")[1]["projects"]}
    assert listed == {OWN: 10, DEFAULTED: 60, KEPT: 3650}
    status, stats = get(url, "/stats")
    assert status == 200 and stats["calls_expired"] == 3 + 2, stats
    assert stats["retention_passes"] >= 1
    with urllib.request.urlopen(url + "/metrics", timeout=30) as resp:
        metrics = resp.read().decode()
    assert "engine_server_calls_expired_total 5" in metrics
    assert "# TYPE engine_server_retention_last_pass_ms gauge" in metrics


def test_a_retention_out_of_range_is_refused_naming_the_field(server):
    url = server()
    for days in (0, -1, 1_000_001, "ten"):
        status, answer, _ = post(url, "/project/ttl_settings/update",
                                 {"project_id": OWN, "retention_days": days})
        assert status in (400, 422) and "retention_days" in answer["reason"], (days, answer)
    status, answer, _ = post(url, "/project/ttl_settings/read", {"project_id": "no-slash"})
    assert status == 422 and "project_id" in answer["reason"]
    # nothing was set: the read answers null (no server default here)
    assert post(url, "/project/ttl_settings/read", {"project_id": OWN})[1] == {"retention_days": None}


def test_serve_refuses_a_retention_that_is_not_a_positive_number_of_days(tmp_path):
    import subprocess
    import sys

    for bad in ("0", "-3", "x"):
        done = subprocess.run([sys.executable, "-m", "engine", "serve", "--port", "0",
                               "--db", str(tmp_path / "t.db"), "--retention-days", bad],
                              capture_output=True, text=True, timeout=60, env=os.environ.copy())
        assert done.returncode == 2 and "--retention-days" in done.stderr, done.stderr
