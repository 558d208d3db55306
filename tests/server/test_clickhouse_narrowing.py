"""The ClickHouse store narrows a call query to the calls that can match (``CallsSql.
candidates``): the answers must be those of the full read, call for call and in order.

Against a real ClickHouse engine (the session's local server), on calls made to trip the
narrowing up: start-time ties at the page's edge, calls started again with another start
time, trace, parent or op (their newest start decides), deleted subtrees, end parts that
arrive alone. ``CANDIDATES_MAX`` is made small so every branch runs (narrowed exactly, a
page by start time that comes back full or falls back to the full read, too many
candidates); the test counts that each one did."""

import asyncio
import collections
import datetime as dt
import random

from engine.server._rows import SELECT_COLUMNS
from engine.server._store import CallsQuery
from engine.server.clickhouse import ClickHouseStore, _calls, _store, parse_store_url
from engine.wire.calls import (
    CompletedCallSchemaForInsert,
    EndedCallSchemaForInsert,
    StartedCallSchemaForInsert,
)
from engine.wire.query import CallsFilter, SortBy
from tests.server.harness import run_on

P = "ent/narrow"
T0 = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)
OPS = ["weave:///ent/narrow/op/a:1", "weave:///ent/narrow/op/b:1", "weave:///ent/narrow/op/c:1"]


def _start(call_id, trace, parent, second, op, complete=False):
    fields = dict(project_id=P, id=call_id, op_name=op, trace_id=trace, parent_id=parent,
                  started_at=T0 + dt.timedelta(seconds=second), attributes={}, inputs={})  # fmt: skip
    if complete:
        return CompletedCallSchemaForInsert(
            **fields, ended_at=T0 + dt.timedelta(seconds=second + 1), summary={})
    return StartedCallSchemaForInsert(**fields)


def _calls_made(rnd):
    """(batches of (starts, ends, completes), ids to delete), in the order to apply them."""
    batches, ids, made = [], [], []
    for i in range(80):
        call_id = f"c{i:03d}"
        trace = f"t{rnd.randrange(8)}"
        parents = [c for c, t in made if t == trace]
        parent = rnd.choice(parents) if parents and rnd.random() < 0.7 else None
        second = rnd.randrange(30)  # few distinct times: ties everywhere
        if rnd.random() < 0.8:
            batches.append(([], [], [_start(call_id, trace, parent, second, rnd.choice(OPS), True)]))
        else:  # start now, end later (or never)
            batches.append(([_start(call_id, trace, parent, second, rnd.choice(OPS))], [], []))
            if rnd.random() < 0.7:
                batches.append(([], [EndedCallSchemaForInsert(
                    project_id=P, id=call_id, ended_at=T0 + dt.timedelta(seconds=40),
                    summary={})], []))  # fmt: skip
        made.append((call_id, trace))
        ids.append(call_id)
    for call_id in rnd.sample(ids, 12):  # started again: other time, trace, parent or op
        trace = f"t{rnd.randrange(8)}"
        again = _start(call_id, trace, rnd.choice([None, rnd.choice(ids)]), rnd.randrange(30),
                       rnd.choice(OPS))  # fmt: skip
        batches.append(([again], [], []))
    return batches, rnd.sample(ids, 5)


def _queries(rnd, n):
    sorts = [(), (SortBy(field="started_at", direction="desc"),),
             (SortBy(field="started_at", direction="asc"),)]  # fmt: skip
    filters = [
        None, CallsFilter(trace_roots_only=True), CallsFilter(op_names=[OPS[0]]),
        CallsFilter(op_names=["weave:///ent/narrow/op/b:*"], trace_roots_only=True),
    ]  # fmt: skip
    for _ in range(n):
        kind = rnd.randrange(4)
        if kind == 1:
            filters.append(CallsFilter(trace_ids=rnd.sample([f"t{i}" for i in range(8)], rnd.randint(1, 3))))
        elif kind == 2:
            filters.append(CallsFilter(parent_ids=[f"c{rnd.randrange(80):03d}" for _ in range(3)],
                                       op_names=[rnd.choice(OPS)] if rnd.random() < 0.3 else None))
        elif kind == 3:
            filters.append(CallsFilter(call_ids=[f"c{rnd.randrange(80):03d}" for _ in range(6)],
                                       trace_roots_only=rnd.random() < 0.5 or None))
    for flt in filters:
        for sort_by in sorts:
            for limit, offset in [(None, 0), (1, 0), (3, 2), (4, 5), (20, 30)]:
                yield CallsQuery(project_id=P, filter=flt, sort_by=sort_by, limit=limit, offset=offset)


def test_narrowed_answers_are_the_full_reads(clickhouse_url, monkeypatch):
    monkeypatch.setattr(_calls, "CANDIDATES_MAX", 6)
    modes = collections.Counter()
    narrow = _store._narrow

    def counted(client, sql, page):
        mode = narrow(client, sql, page)
        modes[mode] += 1
        return mode

    monkeypatch.setattr(_store, "_narrow", counted)
    opened = _store.ClickHouseStore._opened

    async def page_counted(store, sql, offset, must_fill, unchanged=None):
        page = await opened(store, sql, offset, must_fill, unchanged)
        if must_fill:  # a page read among the calls nearest its end: right if it came full
            modes["full page" if page is not None else "fell back"] += 1
        return page

    monkeypatch.setattr(_store.ClickHouseStore, "_opened", page_counted)
    rnd = random.Random(1)
    batches, doomed = _calls_made(rnd)
    queries = list(_queries(rnd, 6))  # 150 queries × 4 reads (12 took 14 s of the suite)

    async def answer(store, query):
        """(query, got, want, counted, want_count) where the narrowed answer differs."""
        got = [c["id"] async for page in store.query_calls(query) for c in page]
        full = _calls.CallsSql(query)
        want = [row[SELECT_COLUMNS.index("id")] for row in await store._run(
            _store._rows, full.select(query.limit, query.offset), full.params)]  # fmt: skip
        counted = await store.count_calls(query)
        full = _calls.CallsSql(query)
        want_count = max(0, await store._run(_store._scalar, full.count(), full.params)
                         - query.offset)  # fmt: skip
        if query.limit is not None:
            want_count = min(want_count, query.limit)
        return None if (got, counted) == (want, want_count) else (query, got, want, counted, want_count)

    async def scenario():
        store = ClickHouseStore(parse_store_url(clickhouse_url))
        try:
            for starts, ends, completes in batches:
                await store.insert_calls(starts, ends, completes)
            await store.delete_calls(P, doomed)
            answers = await asyncio.gather(*(answer(store, query) for query in queries))
            return [x for x in answers if x is not None]
        finally:
            await store.close()

    wrong = run_on("asyncio", scenario())
    assert wrong == [], f"{len(wrong)} of {len(queries)} answers differ, first: {wrong[0]}"
    # every branch ran: narrowed exactly, a full page by start time, one that fell back,
    # and too many candidates
    assert modes["exact"] > 30 and modes["none"] > 30, modes
    assert modes["full page"] > 10 and modes["fell back"] > 3, modes
