"""``/calls/stream_query`` reads one store cursor: what that cursor must never do to others."""

import aiohttp
import msgspec

from engine.server import start_server
from engine.server._sqlite_store import CHUNK_ROWS
from engine.server._state import STATE
from tests.server.harness import PROJECT, Api, complete

COMPLETE = "/v2/ent/proj/calls/complete"
_N_CALLS = CHUNK_ROWS * 3  # a stream of several chunks


async def _store_calls(api: Api, n_calls: int, pad_bytes: int = 10_000) -> None:
    """Calls big enough that a stream of them fills the socket buffers: the server then
    waits, its cursor open, until the client reads on."""
    per_post = 900_000 // pad_bytes  # bodies under aiohttp's 1 MB warning
    for first in range(0, n_calls, per_post):
        batch = [complete(f"c{i:05d}", t_s=i, inputs={"pad": "x" * pad_bytes})
                 for i in range(first, min(n_calls, first + per_post))]  # fmt: skip
        assert (await api.post(COMPLETE, {"batch": batch}))[0] == 200


async def _first_line_then_hang_up(api: Api) -> bytes:
    async with api.session.post(api.url + "/calls/stream_query",
                                json={"project_id": PROJECT}) as resp:  # fmt: skip
        assert resp.status == 200
        return await resp.content.readline()


async def _serve_with_store(db_path, scenario):
    runner, url = await start_server(port=0, db_path=db_path)
    try:
        async with aiohttp.ClientSession() as session:
            return await scenario(Api(session, url), runner.app[STATE].store)
    finally:
        await runner.cleanup()


def test_writes_made_while_a_stream_is_open_are_seen_by_other_reads(run, db_path):
    """The stream's read snapshot is its own: reads beside it see later writes at once."""

    async def scenario(api: Api, store):
        await _store_calls(api, _N_CALLS)
        async with api.session.post(api.url + "/calls/stream_query",
                                    json={"project_id": PROJECT}) as stream:  # fmt: skip
            first = await stream.content.readline()
            assert (await api.post(COMPLETE, {"batch": [complete("late", t_s=-1)]}))[0] == 200
            seen = await api.post("/call/read", {"project_id": PROJECT, "id": "late"})
            rest = (await stream.read()).splitlines()
        return first, rest, seen

    first, rest, (status, body) = run(_serve_with_store(db_path, scenario))
    assert status == 200 and body["call"]["id"] == "late"
    streamed = [msgspec.json.decode(line)["id"] for line in [first, *rest]]
    # the stream itself is one consistent snapshot: the late call (earliest start) is not in it
    assert streamed == [f"c{i:05d}" for i in range(_N_CALLS)]


def test_abandoned_streams_give_their_connections_back(run, db_path):
    async def scenario(api: Api, store):
        await _store_calls(api, _N_CALLS)
        for _ in range(8):  # more than the idle connections kept
            assert await _first_line_then_hang_up(api)
        assert (await api.post(COMPLETE, {"batch": [complete("after", t_s=-1)]}))[0] == 200
        return await api.query(limit=1), len(store._db._idle_stream_conns)

    first_page, idle = run(_serve_with_store(db_path, scenario))
    assert [c["id"] for c in first_page] == ["after"]  # no stale snapshot anywhere
    assert 1 <= idle <= 4


def test_equal_sort_keys_page_without_overlap_in_both_directions(run, db_path):
    calls = [complete(f"t{i:04d}", t_s=7) for i in range(2 * CHUNK_ROWS + 10)]

    async def scenario(api: Api, store):
        await api.post(COMPLETE, {"batch": calls})
        pages = {}
        for direction in ("asc", "desc"):
            sort = [{"field": "started_at", "direction": direction}]
            whole = await api.query(sort_by=sort)
            windows = [await api.query(sort_by=sort, offset=o, limit=700)
                       for o in range(0, len(calls), 700)]  # fmt: skip
            pages[direction] = ([c["id"] for c in whole],
                                [c["id"] for window in windows for c in window])  # fmt: skip
        return pages

    pages = run(_serve_with_store(db_path, scenario))
    ids = [c["id"] for c in calls]
    assert pages["asc"] == (ids, ids)  # ties in arrival order
    assert pages["desc"] == (ids[::-1], ids[::-1])  # and in reverse arrival order when desc


def test_a_stream_asks_its_store_only_for_the_json_it_shows(run, db_path):
    """``columns`` names what the answer shows; the store reads no other JSON column
    (an OTel span shows inside ``attributes``; a storage size counts every column)."""
    asked = {
        "inputs.n": dict(columns=["id", "inputs.n"]),
        "attributes": dict(columns=["attributes"]),
        "costs": dict(columns=["id"], include_costs=True),
        "storage size": dict(columns=["id"], include_storage_size=True),
        "every column": {},
    }

    async def scenario(api: Api, store):
        await _store_calls(api, 3, pad_bytes=10)
        seen, query_calls = [], store.query_calls

        def recorded(query):
            seen.append(query.json_columns)
            return query_calls(query)

        store.query_calls = recorded
        answers = {name: await api.query(**req) for name, req in asked.items()}
        status, _ = await api.post("/calls/query_stats", {"project_id": PROJECT,
                                                          "include_total_storage_size": True})
        return seen, answers, status

    seen, answers, status = run(_serve_with_store(db_path, scenario))
    assert status == 200
    assert seen == [("inputs",), ("attributes", "otel_dump"), ("summary",), None, None, ()]
    assert answers["inputs.n"][0]["inputs"] == {"pad": "x" * 10}
    assert "output" not in answers["attributes"][0] and "output" in answers["every column"][0]
