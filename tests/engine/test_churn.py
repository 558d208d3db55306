"""Long-lived programs: engines opened per job, threads per request, recycled pool workers,
asyncio tasks by the ten thousand. After a warm-up, doing it again and again more must
not grow what the process holds (fds, threads, children, mappings of ring segments, ring
files: ``tests/resources.py``) nor its Python objects; every call is delivered.

The figures at scale (200 engines, 12,000 threads, 300 recycled workers, 50,000 tasks) are
in ``docs/guarantees.md``, "Long-running programs"; these tests run the same loops small.
"""

from __future__ import annotations

import gc
import weakref

import pytest

from tests import resources
from tests.engine.helpers import PROJECT, make_engine, trace_calls
from tests.faultserver import FaultServer

pytestmark = pytest.mark.integration


def _ring_mapped(shm_name: str) -> bool:
    with open("/proc/self/maps") as f:
        return any(shm_name in line for line in f)


def test_a_closed_engine_unmaps_its_ring_set_and_can_be_freed(tmp_path):
    """close() unmaps the segment: a removed segment's memory (16 MiB reserved per producer
    ring by default) is freed only once no process maps it; before, every engine a program
    opened and closed kept its segment mapped, and itself alive (its atexit hook), until
    the program ended."""
    with FaultServer() as server:
        eng = make_engine(server.url, tmp_path)
        ids = trace_calls(eng.producer(), 3)
        name = eng.spec.shm_name
        assert _ring_mapped(name)
        eng.close()
        assert not _ring_mapped(name)
        assert server.stored_ids(PROJECT) == set(ids)
        gone = weakref.ref(eng)
        del eng
        gc.collect()
        assert gone() is None


def _one_job(url, tmp_path, job: int, ids: list[str]) -> None:
    """A job as programs run them: an engine of its own, a few calls, closed (by the with
    block, or by close())."""
    if job % 2:
        with make_engine(url, tmp_path) as eng:
            ids += trace_calls(eng.producer(), 2, prefix=f"job{job}")
    else:
        eng = make_engine(url, tmp_path)
        ids += trace_calls(eng.producer(), 2, prefix=f"job{job}")
        eng.close()


def test_engines_opened_and_closed_one_after_another_hold_nothing_after(tmp_path):
    with FaultServer() as server:
        ids: list[str] = []
        for job in range(2):  # warm-up: the server's connections, lazy imports
            _one_job(server.url, tmp_path, job, ids)
        before = resources.held()
        for job in range(2, 6):
            _one_job(server.url, tmp_path, job, ids)
        after = resources.held()
        assert resources.grown(before, after) == {}, (before, after)
        assert after["children"] == after["ring_mappings"] == after["ring_files"] == 0, after
        assert server.stored_ids(PROJECT) == set(ids) and len(ids) == 6 * 4
        assert server.duplicate_deliveries() == 0
