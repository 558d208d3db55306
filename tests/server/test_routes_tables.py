"""Tables, refs and files against ``engine serve``: digests, updates, queries, streams."""

import aiohttp
import msgspec

from engine.server._digest import bytes_digest, table_digest, value_digest
from tests.server.harness import PROJECT, serving

ROWS = [{"q": "b", "n": 2}, {"q": "a", "n": 1}, {"q": "c", "n": 3}]


async def create(api, rows=ROWS):
    status, body = await api.post("/table/create", {"table": {"project_id": PROJECT, "rows": rows}})
    assert status == 200, body
    return body


def test_table_create_is_content_addressed_and_idempotent(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            first = await create(api)
            assert first["row_digests"] == [value_digest(r) for r in ROWS]
            assert first["digest"] == table_digest(first["row_digests"])
            assert await create(api) == first
            _, stats = await api.post(
                "/table/query_stats", {"project_id": PROJECT, "digest": first["digest"]}
            )
            assert stats == {"count": 3}

    run(scenario())


def test_table_update_append_pop_insert_and_query(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            base = await create(api)
            updates = [{"append": {"row": {"q": "d", "n": 4}}}, {"pop": {"index": 0}},
                       {"insert": {"index": 0, "row": {"q": "e", "n": 0}}}]  # fmt: skip
            body = {"project_id": PROJECT, "base_digest": base["digest"], "updates": updates}
            status, new = await api.post("/table/update", body)
            assert status == 200 and len(new["updated_row_digests"]) == 3  # the popped row counts
            query = {"project_id": PROJECT, "digest": new["digest"]}
            _, res = await api.post("/table/query", query)
            assert [r["val"]["q"] for r in res["rows"]] == ["e", "a", "c", "d"]
            assert [r["original_index"] for r in res["rows"]] == [0, 1, 2, 3]
            by_n = {
                **query,
                "sort_by": [{"field": "n", "direction": "desc"}],
                "limit": 2,
                "offset": 1,
            }
            assert [r["val"]["n"] for r in (await api.post("/table/query", by_n))[1]["rows"]] == [
                3,
                1,
            ]
            pick = {**query, "filter": {"row_digests": [base["row_digests"][2]]}}
            assert [r["val"]["q"] for r in (await api.post("/table/query", pick))[1]["rows"]] == [
                "c"
            ]
            batch = {"project_id": PROJECT, "digests": [base["digest"], new["digest"], "nope"],
                     "include_storage_size": True}  # fmt: skip
            _, stats = await api.post("/table/query_stats_batch", batch)
            assert [t["count"] for t in stats["tables"]] == [3, 4]
            assert all(t["storage_size_bytes"] > 0 for t in stats["tables"])
            base_query = {"project_id": PROJECT, "digest": base["digest"]}
            assert len((await api.post("/table/query", base_query))[1]["rows"]) == 3  # base intact

    run(scenario())


def test_table_bad_input_answers_4xx_with_reason(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            base = await create(api)
            pop = {
                "project_id": PROJECT,
                "base_digest": base["digest"],
                "updates": [{"pop": {"index": 9}}],
            }
            status, body = await api.post("/table/update", pop)
            assert status == 400 and "updates[0].pop.index" in body["reason"]
            two = {**pop, "updates": [{"pop": {"index": 0}, "append": {"row": {}}}]}
            assert (await api.post("/table/update", two))[0] == 422
            # an unknown table holds no rows, as weave answers
            unknown = {"project_id": PROJECT, "digest": "unknown"}
            assert await api.post("/table/query", unknown) == (200, {"rows": []})
            wrong = {"table": {"project_id": PROJECT, "rows": ROWS, "expected_digest": "x"}}
            assert (await api.post("/table/create", wrong))[0] == 409
            missing = {"project_id": PROJECT, "row_digests": ["nope"]}
            assert (await api.post("/table/create_from_digests", missing))[0] == 404

    run(scenario())


# the order weave's ClickHouse server gives (JSON_EXISTS DESC, toFloat64OrNull(JSON_VALUE)
# then toString(JSON_VALUE) in the direction asked), as chDB answers it for these rows
MIXED = [{"n": "abc"}, {"n": 3}, {"n": "2"}, {"n": None}, {"o": 0}, {"n": True}, {"n": {"a": 1}},
         {"n": 1}]  # fmt: skip
MIXED_ASC = [1, "2", 3, {"a": 1}, "abc", None, True, "absent"]
MIXED_DESC = [3, "2", 1, True, None, "abc", {"a": 1}, "absent"]


def test_table_sort_puts_numbers_first_and_rows_without_the_field_last_both_ways(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            table = await create(api, MIXED)
            orders = []
            for direction in ("asc", "desc"):
                query = {"project_id": PROJECT, "digest": table["digest"],
                         "sort_by": [{"field": "n", "direction": direction}]}  # fmt: skip
                _, res = await api.post("/table/query", query)
                orders.append([r["val"].get("n", "absent") for r in res["rows"]])
            return orders

    assert run(scenario()) == [MIXED_ASC, MIXED_DESC]


def test_table_query_stream_streams_every_row_as_jsonl(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            rows = [{"i": i} for i in range(2500)]  # more than one store page
            table = await create(api, rows)
            body = {"project_id": PROJECT, "digest": table["digest"]}
            async with api.session.post(api.url + "/table/query_stream", json=body) as resp:
                assert resp.content_type == "application/jsonl"
                assert resp.headers.get("Content-Length") is None  # chunked, not buffered whole
                seen = [
                    msgspec.json.decode(line)["val"]["i"]
                    async for line in resp.content
                    if line.strip()
                ]
            assert seen == list(range(2500))
            again = {"project_id": PROJECT, "row_digests": table["row_digests"][:2]}
            _, made = await api.post("/table/create_from_digests", again)
            assert made["digest"] == table_digest(table["row_digests"][:2])

    run(scenario())


def test_refs_resolve_objects_attributes_and_table_rows(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            table = await create(api)
            val = {
                "name": "ds",
                "rows": f"weave:///{PROJECT}/table/{table['digest']}",
                "tags": ["x", "y"],
            }
            obj = {"obj": {"project_id": PROJECT, "object_id": "ds", "val": val}}
            _, created = await api.post("/obj/create", obj)
            ref = f"weave:///{PROJECT}/object/ds:{created['digest']}"
            refs = [ref, ref + "/attr/name", ref + "/attr/tags/index/1",
                    ref + f"/attr/rows/id/{table['row_digests'][1]}", f"weave:///{PROJECT}/object/ds:latest",
                    ref + "/attr/missing"]  # fmt: skip
            status, body = await api.post("/refs/read_batch", {"refs": refs})
            assert status == 200, body
            assert body["vals"] == [val, "ds", "y", ROWS[1], val, None]
            missing = [ref, f"weave:///{PROJECT}/object/nothing:latest"]
            status, body = await api.post("/refs/read_batch", {"refs": missing})
            assert status == 404 and "refs[1]" in body["reason"] and "nothing" in body["reason"]
            status, body = await api.post("/refs/read_batch", {"refs": ["http://x"]})
            assert status == 400 and "refs[0]" in body["reason"]

    run(scenario())


def test_files_upload_read_and_stats_on_new_and_old_paths(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            content = bytes(range(256)) * 4
            for path in ("/file/create", "/files/create"):
                form = aiohttp.FormData()
                form.add_field("project_id", PROJECT)
                form.add_field("file", content, filename="blob.bin")
                async with api.session.post(api.url + path, data=form) as resp:
                    assert resp.status == 200
                    assert (await resp.json())["digest"] == bytes_digest(content)
            for path in ("/file/content", "/files/content"):
                body = {"project_id": PROJECT, "digest": bytes_digest(content)}
                assert await api.post(path, body) == (200, content)
            for path in ("/files/query_stats", "/files/stats"):
                assert (await api.post(path, {"project_id": PROJECT}))[1] == {
                    "total_size_bytes": 1024
                }
            status, body = await api.post(
                "/file/content", {"project_id": PROJECT, "digest": "nope"}
            )
            assert status == 404 and "nope" in body["reason"]
            form = aiohttp.FormData()
            form.add_field("project_id", PROJECT)
            form.add_field("expected_digest", "wrong")
            form.add_field("file", b"abc", filename="a")
            async with api.session.post(api.url + "/file/create", data=form) as resp:
                assert resp.status == 409 and "expected_digest" in (await resp.json())["reason"]

    run(scenario())
