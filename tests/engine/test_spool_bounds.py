"""A long outage never fills the disk, and what could not go to disk goes to the server.

The spool holds at most ``spool_max_bytes``; the spool and the dead letters leave their
disk ``disk_keep_free_bytes``; a disk can also be full for real. In each case the batches
that could not be written wait in shared memory (*parked*), said once and counted by
reason, and once the server answers again they are sent to it -- not to the dead letters
when the disk has room again, where only a replay by hand would send them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.engine.test_full_disk import _tmpfs
from tests.faultserver import FaultServer
from tests.pipeline import Pipeline, Sandbox, account, poll_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# 64 KiB rings: the producers' calls (~1 MB each) fill them while the server is down, so
# the parked batches hold the ring space the producers wait for
_SETTINGS = {"shutdown_timeout_s": 5.0, "delivery_deadline_s": 0.3, "ring_bytes": 64 << 10,
             "max_slots": 4, "backoff_initial_ms": 20, "backoff_max_ms": 100,
             "max_block_ms": 200}
_BOUND = 16 << 10
_TMPFS_BYTES = 1 << 20


def _folder_bytes(folders: list[Path]) -> int:
    return sum(p.stat().st_size for folder in folders for p in folder.glob("*.seg"))


@pytest.mark.parametrize("bound", ["spool_max_bytes", "disk_keep_free_bytes", "full disk"])
def test_an_outage_past_the_spools_room_waits_in_memory_then_goes_to_the_server(tmp_path, bound):
    sandbox = Sandbox(tmp_path)
    settings = dict(_SETTINGS, disk_keep_free_bytes=0)
    if bound == "spool_max_bytes":
        settings["spool_max_bytes"] = _BOUND
    elif bound == "disk_keep_free_bytes":
        settings["disk_keep_free_bytes"] = _TMPFS_BYTES - _BOUND
    tmpfs_bytes = _BOUND if bound == "full disk" else _TMPFS_BYTES
    with FaultServer() as server, _tmpfs(sandbox.state, tmpfs_bytes) as mounted:
        if bound != "spool_max_bytes" and not mounted:
            assert os.geteuid() != 0, "root could not mount a tmpfs"
            pytest.skip("mounting a tmpfs needs root (CI runs as root)")
        server.down()
        run = Pipeline(sandbox, server.url, producers=2, calls=1500, payload_bytes=500,
                       settings=settings).start()
        try:
            said = {"spool_max_bytes": "spool_max_bytes", "full disk": "No space left on device",
                    "disk_keep_free_bytes": "disk_keep_free_bytes"}[bound]
            assert poll_until(lambda: said in run.log(), timeout_s=60), run.log()[-3000:]
            held = _folder_bytes(sandbox.spool_dirs())
            if bound != "full disk":  # the bound held: the disk never filled
                assert 0 < held <= _BOUND, held
                assert "No space left on device" not in run.log()
            if mounted and bound == "disk_keep_free_bytes":
                free = os.statvfs(sandbox.state)
                assert free.f_bavail * free.f_frsize >= _TMPFS_BYTES - _BOUND
            assert run.proc.poll() is None  # the producers wait for the ring space held
            server.up()
            assert run.wait(timeout_s=90) == 0, run.log()[-3000:]
            run.wait_sender_gone(timeout_s=30)
        finally:
            run.stop()
        stats, log = run.stats, run.log()
        counter = "unpersisted_spool_full" if bound == "spool_max_bytes" else "unpersisted_no_space"
        assert stats[counter] > 0, stats
        assert stats["parked_items"] == 0 and stats["kept_in_ring"] == 0, stats
        for folder in [*sandbox.spool_dirs(), sandbox.dead_letter_path]:  # once for each
            lines = [line for line in log.splitlines() if f"cannot write items to {folder}:" in line]
            assert len(lines) <= 1 and all(said in line for line in lines), lines
        level = "ERROR" if bound == "full disk" else "WARNING"  # a bound does what it is for
        assert [line for line in log.splitlines() if f" {level} " in line and said in line]
        assert "Traceback" not in log
        # what was parked went to the server, not to the dead letters once there was room
        dead = sandbox.dead_letter_path  # made empty where the full disk refused the first
        assert stats["dead_letters"] == 0 and (not dead.exists() or not dead.stat().st_size), stats
        after = account(run.produced(), server.snapshot(), [], sandbox.spool_dirs())
        assert after.produced == 4500 and after.lost == 0, (after.row(), after.lost_ids[:5])
        # the server answering at close, what the run spooled went too (not left to the next)
        assert after.delivered == after.produced, after.row()
        assert _folder_bytes(sandbox.spool_dirs()) == 0

