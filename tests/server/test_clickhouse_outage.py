"""``engine serve --store clickhouse://…`` while its ClickHouse server is down (restarted,
upgraded, a network fault): every request answers 503 with the reason and ``Retry-After``
(the client keeps its calls and retries), the log says it once instead of a traceback per
request, and once ClickHouse is back every call is stored, once.

Real processes: a local ClickHouse server (chDB behind ClickHouse's HTTP interface) of the
test's own, stopped and started again on the same folder and port; ``engine serve`` as a
subprocess; the engine's own client.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import engine
from engine.server.clickhouse._process import start_local_clickhouse
from tests.server.serve_process import (
    complete_call,
    free_port,
    post,
    stop,
    stored_ids,
    wait_health,
)

pytestmark = pytest.mark.integration
PROJECT = "ent/clickhouse-outage"
PASSWORD = "outage-test-password"


def test_a_clickhouse_outage_answers_503_with_a_reason_and_every_call_lands_once_it_is_back(
        tmp_path):
    folder = tmp_path / "clickhouse"
    clickhouse = start_local_clickhouse(folder, PASSWORD)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    env["ENGINE_CLICKHOUSE_PASSWORD"] = PASSWORD
    server = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", "--store", clickhouse.store_url("outage"),
         "--port", str(port)],
        env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    eng = None
    try:
        wait_health(url, server)
        before = complete_call(PROJECT, 0, "stored before the outage")
        assert post(url, f"/v2/{PROJECT}/calls/complete", {"batch": [before]})[0] == 200

        clickhouse.stop()
        for i in range(3):  # every request, a write and a read, the same answer
            status, answer, headers = post(url, f"/v2/{PROJECT}/calls/complete",
                                           {"batch": [complete_call(PROJECT, i, "refused")]})
            assert status == 503, (status, answer)
            assert "ClickHouse server cannot be reached" in answer["reason"], answer
            assert f":{clickhouse.port}/outage" in answer["reason"]  # where, never the password
            assert PASSWORD not in answer["reason"] and headers.get("Retry-After") == "5"
        status, answer, _ = post(url, "/calls/query_stats", {"project_id": PROJECT})
        assert status == 503 and "cannot be reached" in answer["reason"]

        # the engine's client: its calls wait (retried) while ClickHouse is down
        eng = engine.Engine(url=url, project=PROJECT, linger_ms=5, delivery_deadline_s=120)
        tracer = eng.producer()
        waiting = [complete_call(PROJECT, 1000 + i, "sent during the outage") for i in range(200)]
        for call in waiting:
            tracer.call_complete(call)
        assert not eng.flush(3)  # nothing lands yet

        clickhouse = start_local_clickhouse(folder, PASSWORD, port=clickhouse.port)  # back
        assert eng.flush(60)
        stats = eng.stats()
        assert stats["dead_letters"] == 0 and stats["retries"] > 0
        eng.close()
        eng = None
        ids = stored_ids(url, PROJECT)
        assert {before["id"], *(c["id"] for c in waiting)} <= set(ids)
        assert len(ids) == len(set(ids)) == 201
    finally:
        if eng is not None:
            eng.close()
        err = stop(server)
        clickhouse.stop()
    assert "Traceback" not in err, err[-3000:]
    assert err.count("cannot be reached") == 1, err[-3000:]  # said once, not per request


def test_serve_on_an_unreachable_clickhouse_says_so_and_exits_1():
    store = f"clickhouse://default@127.0.0.1:{free_port()}/nothing_listens"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    env["ENGINE_CLICKHOUSE_PASSWORD"] = PASSWORD
    done = subprocess.run([sys.executable, "-m", "engine", "serve", "--store", store, "--port", "0"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done
    line = next(ln for ln in done.stderr.splitlines() if ln.startswith("engine: error:"))
    assert "the store's ClickHouse server cannot be reached" in line and store[13:] in line, line
    assert "unexpected" not in line and "Traceback" not in done.stderr and PASSWORD not in done.stderr
