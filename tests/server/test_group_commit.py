"""Group commit of call batches (``engine/server/_group.py``, both stores): batches that
arrive while an insert runs go in together (one ``INSERT`` into ClickHouse, one SQLite
transaction), and read back exactly as SQLite stores the same batches one by one; a
combined insert that fails is retried batch by batch, so only the refused batch fails (the
splitting logic is tested with a recording insert)."""

import asyncio

import pytest

from engine.server._group import GroupCommit
from engine.server._sqlite_store import SQLiteStore
from engine.server.clickhouse import ClickHouseStore, parse_store_url
from tests.server.harness import run_on
from tests.server.test_clickhouse_bulk import _batches, _read_all


class _Recorder:
    """An insert that records each group's batches (their names) and refuses any group
    holding a batch named ``bad``."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []

    async def __call__(self, batches):
        names = [b[0][0] for b in batches]
        self.groups.append(names)
        await asyncio.sleep(0.01)
        if "bad" in names:
            raise ValueError("refused")


def _batch(name: str, parts: int):
    return ([name] * parts, [], [])


def test_waiting_batches_go_in_together_up_to_the_part_cap():
    async def scenario():
        insert = _Recorder()
        group = GroupCommit(insert, lanes=1, max_parts=7)
        await asyncio.gather(*(group.submit(_batch(f"b{i}", 3), 3) for i in range(5)))
        await group.close()
        return insert.groups

    # the first insert takes what waits (the lane starts after every submit queued)
    assert run_on("asyncio", scenario()) == [["b0", "b1"], ["b2", "b3"], ["b4"]]


def test_a_refused_batch_fails_only_its_own_request():
    async def scenario():
        insert = _Recorder()
        group = GroupCommit(insert, lanes=1)
        names = ["ok1", "bad", "ok2"]
        results = await asyncio.gather(*(group.submit(_batch(n, 1), 1) for n in names),
                                       return_exceptions=True)  # fmt: skip
        return insert.groups, [type(r).__name__ for r in results]

    groups, results = run_on("asyncio", scenario())
    assert groups == [["ok1", "bad", "ok2"], ["ok1"], ["bad"], ["ok2"]]
    assert results == ["NoneType", "ValueError", "NoneType"]


@pytest.mark.parametrize("lanes", [1, 2])
def test_a_batch_handed_over_as_the_last_lane_finishes_is_inserted(lanes):
    """Each request awaits its batch, then sends the next at once: the lane that inserted
    the last one has just found nothing pending. Before, it left the running set only in a
    later callback, so the next batch found no free lane and waited forever."""

    async def requests(group):
        for i in range(5):
            await group.submit(_batch(f"b{i}", 1), 1)  # awaited in this task, not a new one

    async def scenario():
        insert = _Recorder()
        group = GroupCommit(insert, lanes=lanes)
        await asyncio.wait_for(requests(group), 5)
        await group.close()
        return insert.groups

    assert run_on("asyncio", scenario()) == [[f"b{i}"] for i in range(5)]


def test_a_batch_whose_request_went_away_is_still_inserted():
    async def scenario():
        insert = _Recorder()
        group = GroupCommit(insert, lanes=1)
        first = asyncio.ensure_future(group.submit(_batch("first", 1), 1))
        gone = asyncio.ensure_future(group.submit(_batch("gone", 1), 1))
        await asyncio.sleep(0)  # both queued; the lane has not taken them yet
        gone.cancel()
        await first
        later = group.submit(_batch("later", 1), 1)
        await later
        await group.close()
        return insert.groups, gone.cancelled()

    assert run_on("asyncio", scenario()) == ([["first", "gone"], ["later"]], True)


@pytest.mark.integration
def test_concurrent_batches_combined_read_back_as_sqlite_stores_them(tmp_path, clickhouse_url):
    starts, ends, completes = _batches()
    # starts and the ends of the same calls in separate requests (each large: the bulk path)
    requests = [(starts, [], []), ([], ends, []), ([], [], completes)]

    async def clickhouse() -> tuple[list[dict], list[int]]:
        store = ClickHouseStore(parse_store_url(clickhouse_url))
        sizes: list[int] = []

        async def spy(batches):
            sizes.append(len(batches))
            await store._insert_group(batches)

        store._group = GroupCommit(spy)
        try:
            # in flight at once: all three wait when the first lane starts, one INSERT
            await asyncio.gather(*(store.insert_calls(*r) for r in requests))
            await store.insert_calls(*requests[0])  # alone: a resent batch changes nothing
            return await _read_all(store), sizes
        finally:
            await store.close()

    async def sqlite() -> list[dict]:
        store = SQLiteStore(tmp_path / "t.db")
        try:
            for r in requests:
                await store.insert_calls(*r)
            return await _read_all(store)
        finally:
            await store.close()

    ours, sizes = run_on("asyncio", clickhouse())
    assert sizes == [3, 1]
    theirs = run_on("asyncio", sqlite())
    assert len(ours) == 180
    assert ours == theirs


class _StoreDown(Exception):
    pass


def test_an_error_of_the_store_fails_every_batch_of_the_group_without_retrying_each():
    """ClickHouse out of reach (or full) refuses every batch alike: trying each alone would
    only send a struggling server the whole group again."""

    async def scenario():
        groups = []

        async def insert(batches):
            groups.append([b[0][0] for b in batches])
            await asyncio.sleep(0.01)
            raise _StoreDown("cannot be reached")

        group = GroupCommit(insert, lanes=1, shared=lambda exc: isinstance(exc, _StoreDown))
        results = await asyncio.gather(*(group.submit(_batch(n, 1), 1) for n in ["a", "b", "c"]),
                                       return_exceptions=True)  # fmt: skip
        return groups, [type(r).__name__ for r in results]

    groups, results = run_on("asyncio", scenario())
    assert groups == [["a", "b", "c"]]
    assert results == ["_StoreDown"] * 3
