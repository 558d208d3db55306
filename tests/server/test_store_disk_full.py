"""``engine serve`` whose SQLite disk fills: every ingest answer is 507 with a reason (the
client keeps its calls and retries), the server says it once in its log instead of a
traceback per request, and once there is room again every call is stored, once.

The real thing: the database on a small tmpfs mounted in a mount namespace of the server's
own (``unshare -m``, root), filled up front by a file the test deletes through
``/proc/<pid>/root`` to make room.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import engine
from tests.server.serve_process import (
    NEEDS_MOUNT,
    can_mount,
    complete_call,
    free_port,
    post,
    stop,
    stored_ids,
    wait_health,
)

pytestmark = pytest.mark.integration
PROJECT = "ent/disk-full"
_MOUNT = "/tmp/engine-test-disk-full"


@pytest.mark.skipif(not can_mount(), reason=NEEDS_MOUNT)
def test_a_full_store_disk_answers_507_with_a_reason_and_every_call_lands_once_room_is_made(
        tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # 16 MiB, 10 of them taken by a filler: the database fills after a few MB of calls
    script = (f"mkdir -p {_MOUNT} && mount -t tmpfs -o size=16m tmpfs {_MOUNT} && "
              f"head -c 10485760 /dev/zero > {_MOUNT}/filler && "
              f"exec {sys.executable} -m engine serve --db {_MOUNT}/t.db --port {port}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    server = subprocess.Popen(["unshare", "-m", "sh", "-c", script], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_health(url, server)
        text = "x" * 20_000
        status, answer = 200, {}
        for i in range(2000):  # ~20 KB calls until the disk is full (at most ~40 MB)
            status, answer, _ = post(url, f"/v2/{PROJECT}/calls/complete",
                                     {"batch": [complete_call(PROJECT, i, text)]})
            if status != 200:
                break
        assert status == 507, (status, answer)
        assert "the store's disk is full" in answer["reason"] and "t.db" in answer["reason"]
        # the engine's client: its calls wait (retried, Retry-After) while the disk is full
        eng = engine.Engine(url=url, project=PROJECT, linger_ms=5, delivery_deadline_s=120)
        try:
            tracer = eng.producer()
            waiting = [complete_call(PROJECT, 10_000 + i, "y" * 2000) for i in range(200)]
            for call in waiting:
                tracer.call_complete(call)
            assert not eng.flush(3)  # nothing fits yet
            os.unlink(f"/proc/{server.pid}/root{_MOUNT}/filler")  # room, as an operator makes it
            assert eng.flush(60)
            stats = eng.stats()
            assert stats["dead_letters"] == 0 and stats["retries"] > 0
        finally:
            eng.close()
        ids = stored_ids(url, PROJECT)
        assert {c["id"] for c in waiting} <= set(ids) and len(ids) == len(set(ids))
    finally:
        err = stop(server)
    assert "Traceback" not in err, err[-3000:]
    assert err.count("the store's disk is full") == 1, err[-3000:]  # said once, not per request
