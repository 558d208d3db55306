"""Pages by start time read on from where the previous page ended (``_sqlite_pages``): the
same calls as the offset gives, page for page, and the offset again once anything changed.

The pages are asked for as weave's client asks (``limit`` 1,000-style pages with growing
offsets, here smaller), on calls with many equal start times (the order's ties are broken
by arrival), in the default order, by start time either way, and with filters."""

import datetime as dt
import random

import pytest

from engine.server._store import CallsQuery
from engine.wire.calls import CompletedCallSchemaForInsert, StartedCallSchemaForInsert
from engine.wire.query import CallsFilter, SortBy
from tests.server.test_store_contract import store_run  # noqa: F401  (a fresh SQLite store)

P = "ent/pages"
T0 = dt.datetime(2026, 4, 1, tzinfo=dt.timezone.utc)
OPS = ["weave:///ent/pages/op/a:1", "weave:///ent/pages/op/b:1"]


def _call(i: int, second: int, op: str) -> CompletedCallSchemaForInsert:
    return CompletedCallSchemaForInsert(
        project_id=P, id=f"00000000-0000-7000-8000-{i:012d}", op_name=op, trace_id="t",
        started_at=T0 + dt.timedelta(seconds=second), ended_at=T0 + dt.timedelta(seconds=60),
        attributes={}, inputs={"i": i}, summary={},
        exception="boom" if i % 7 == 0 else None,
    )  # fmt: skip


def _queries():
    errors = {"$expr": {"$eq": [{"$getField": "summary.weave.status"}, {"$literal": "error"}]}}
    for sort_by in [(), (SortBy(field="started_at", direction="asc"),),
                    (SortBy(field="started_at", direction="desc"),)]:  # fmt: skip
        yield dict(sort_by=sort_by)
        yield dict(sort_by=sort_by, filter=CallsFilter(op_names=[OPS[1]]))
        yield dict(sort_by=sort_by, query=errors)


async def paged_unlike_whole(store, calls, page_rows: int) -> list:
    """Store ``calls``, then page through each of ``_queries()``: those whose pages are not
    one full read's calls in its order (with how many calls each way)."""
    for i in range(0, len(calls), 100):
        await store.insert_calls([], [], calls[i : i + 100])
    wrong = []
    for query in _queries():
        whole = await _ids(store, **query)
        pages = []
        for offset in range(0, len(calls) + page_rows, page_rows):  # bounded: one past
            page = await _ids(store, limit=page_rows, offset=offset, **query)
            pages += page
            if len(page) < page_rows:
                break
        if pages != whole:
            wrong.append((query, len(pages), len(whole)))
    return wrong


async def _ids(store, **query):
    return [c["id"] async for page in store.query_calls(CallsQuery(project_id=P, **query))
            for c in page]  # fmt: skip


@pytest.mark.parametrize("page_rows", [7, 150])  # one read / a stream per page
def test_pages_read_on_from_the_last_end_are_the_offsets_pages(store_run, page_rows):  # noqa: F811
    rnd = random.Random(page_rows)
    calls = [_call(i, rnd.randrange(40), rnd.choice(OPS)) for i in range(900)]
    rnd.shuffle(calls)  # arrival order is not id or time order

    async def scenario(store):
        return await paged_unlike_whole(store, calls, page_rows), store.pages_read_on

    wrong, read_on = store_run(scenario)
    assert wrong == []
    assert read_on >= 9 * (900 // 7 // 3 if page_rows == 7 else 2)  # most pages


def test_a_write_between_pages_sends_the_next_page_back_to_the_offset(store_run):  # noqa: F811
    async def scenario(store):
        await store.insert_calls([], [], [_call(i, i, OPS[0]) for i in range(30)])
        pages = [(await _ids(store, limit=10, offset=0), await _ids(store))]
        pages.append((await _ids(store, limit=10, offset=10), await _ids(store)))  # read on
        after_second = store.pages_read_on
        # a call that starts before every page so far: the offset moves everything on by one
        await store.insert_calls([], [], [_call(99, -5, OPS[0])])
        pages.append((await _ids(store, limit=10, offset=20), await _ids(store)))
        # a start-only call among the next page's
        await store.insert_calls([StartedCallSchemaForInsert(
            project_id=P, id=_call(100, 25, OPS[0]).id, op_name=OPS[0], trace_id="t",
            started_at=T0 + dt.timedelta(seconds=25), attributes={}, inputs={})], [], [])
        pages.append((await _ids(store, limit=10, offset=30), await _ids(store)))
        return after_second, pages, store.pages_read_on

    after_second, pages, read_on = store_run(scenario)
    assert after_second == 1 and read_on == 1  # the later pages: the offset again
    for k, (page, whole) in enumerate(pages):
        assert page == whole[10 * k : 10 * k + 10], k
    assert pages[2][0][0] == _call(19, 19, OPS[0]).id  # shifted by one
