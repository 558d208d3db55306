"""The ClickHouse store's pages by start time read on from where the previous page ended
(``clickhouse/_pages.py``): the same calls as the offset gives, page for page, and the
offset again once the project changed; against a real ClickHouse engine, on the calls of
``test_sqlite_page_ends`` (tied start times, three orders, filters)."""

import datetime as dt
import random

from engine.server.clickhouse import _calls, _pages
from engine.wire.calls import StartedCallSchemaForInsert
from tests.server.test_sqlite_page_ends import OPS, T0, P, _call, _ids, paged_unlike_whole
from tests.server.test_store_contract_clickhouse import store_run  # noqa: F401  (a fresh database)


def _counting(monkeypatch):
    seen = {"read on": 0}
    read_on = _pages.read_on

    def counted(client, query, end):
        sql = read_on(client, query, end)
        seen["read on"] += sql is not None
        return sql

    monkeypatch.setattr(_pages, "read_on", counted)
    return seen


def test_pages_read_on_from_the_last_end_are_the_offsets_pages(store_run, monkeypatch):  # noqa: F811
    monkeypatch.setattr(_calls, "CANDIDATES_MAX", 40)  # both ways of narrowing run
    seen = _counting(monkeypatch)
    rnd = random.Random(3)
    calls = [_call(i, rnd.randrange(40), rnd.choice(OPS)) for i in range(300)]
    rnd.shuffle(calls)

    async def scenario(store):
        return await paged_unlike_whole(store, calls, 13)

    assert store_run(scenario) == []
    assert seen["read on"] > 9 * 5, seen


def test_a_write_between_pages_sends_the_next_page_back_to_the_offset(store_run, monkeypatch):  # noqa: F811
    seen = _counting(monkeypatch)

    async def scenario(store):
        await store.insert_calls([], [], [_call(i, i, OPS[0]) for i in range(30)])
        pages = [(await _ids(store, limit=10, offset=0), await _ids(store))]
        pages.append((await _ids(store, limit=10, offset=10), await _ids(store)))  # read on
        after_second = seen["read on"]
        await store.insert_calls([], [], [_call(99, -5, OPS[0])])  # before every page
        pages.append((await _ids(store, limit=10, offset=20), await _ids(store)))
        await store.insert_calls([StartedCallSchemaForInsert(
            project_id=P, id=_call(100, 25, OPS[0]).id, op_name=OPS[0], trace_id="t",
            started_at=T0 + dt.timedelta(seconds=25), attributes={}, inputs={})], [], [])
        pages.append((await _ids(store, limit=10, offset=30), await _ids(store)))
        return after_second, pages

    after_second, pages = store_run(scenario)
    assert after_second == 1 and seen["read on"] == 1
    for k, (page, whole) in enumerate(pages):
        assert page == whole[10 * k : 10 * k + 10], k
    assert pages[2][0][0] == _call(19, 19, OPS[0]).id

