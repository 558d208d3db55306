"""Reads and edits: call_read, stream_query filters/sort/paging, query_stats, delete, update."""

from tests.server.harness import PROJECT, complete, serving

COMPLETE = "/v2/ent/proj/calls/complete"


def _tree() -> list[dict]:
    """Two traces: root r1 with children c1, c2 (c2 has grandchild g1); root r2 alone."""
    return [
        complete("r1", trace_id="t1", t_s=10, op_name="weave:///ent/proj/op/root:v1"),
        complete("c1", trace_id="t1", parent_id="r1", t_s=30, op_name="weave:///ent/proj/op/step:v1"),
        complete("c2", trace_id="t1", parent_id="r1", t_s=20, op_name="weave:///ent/proj/op/step:v2"),
        complete("g1", trace_id="t1", parent_id="c2", t_s=25, op_name="weave:///ent/proj/op/leaf:v1"),
        complete("r2", trace_id="t2", t_s=5, op_name="weave:///ent/proj/op/root:v1"),
    ]  # fmt: skip


def _ids(calls: list[dict]) -> list[str]:
    return [c["id"] for c in calls]


def test_stream_query_filters_sorts_and_pages(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            assert (await api.post(COMPLETE, {"batch": _tree()}))[0] == 200
            by_start = [{"field": "started_at", "direction": "asc"}]
            return {
                "default": await api.query(),
                "roots": await api.query(filter={"trace_roots_only": True}, sort_by=by_start),
                "trace": await api.query(filter={"trace_ids": ["t2"]}),
                "children": await api.query(filter={"parent_ids": ["r1", "c2"]}, sort_by=by_start),
                "ids": await api.query(filter={"call_ids": ["g1", "r2", "nope"]}, sort_by=by_start),
                "exact_op": await api.query(filter={"op_names": ["weave:///ent/proj/op/step:v2"]}),
                "any_version": await api.query(
                    filter={"op_names": ["weave:///ent/proj/op/step:*"]}, sort_by=by_start
                ),
                "desc": await api.query(sort_by=[{"field": "started_at", "direction": "desc"}]),
                "by_id": await api.query(sort_by=[{"field": "id", "direction": "asc"}]),
                "page": await api.query(sort_by=by_start, limit=2, offset=1),
                "past_end": await api.query(offset=99),
                "no_rows": await api.query(limit=0),
            }

    got = {name: _ids(calls) for name, calls in run(scenario()).items()}
    assert got["default"] == ["r2", "r1", "c2", "g1", "c1"]
    assert got["roots"] == ["r2", "r1"]
    assert got["trace"] == ["r2"]
    assert got["children"] == ["c2", "g1", "c1"]
    assert got["ids"] == ["r2", "g1"]
    assert got["exact_op"] == ["c2"]
    assert got["any_version"] == ["c2", "c1"]
    assert got["desc"] == ["c1", "g1", "c2", "r1", "r2"]
    assert got["by_id"] == sorted(got["default"])
    assert got["page"] == ["r1", "c2"]
    assert got["past_end"] == [] and got["no_rows"] == []


def test_stream_query_pages_internally_past_one_store_page(run, db_path):
    calls = [complete(f"n{i:05d}", t_s=i) for i in range(2500)]

    async def scenario():
        async with serving(db_path) as api:
            await api.post(COMPLETE, {"batch": calls})
            return await api.query(), await api.query(offset=999, limit=1002)

    everything, window = run(scenario())
    assert _ids(everything) == [c["id"] for c in calls]
    assert _ids(window) == [c["id"] for c in calls[999:2001]]


def test_unsupported_sort_field_and_query_operator_are_422(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            bad_sort = {"project_id": PROJECT, "sort_by": [{"field": "nope", "direction": "asc"}]}
            expr = {"project_id": PROJECT, "query": {"$expr": {"$regex": [1, 1]}}}
            return (
                await api.post("/calls/stream_query", bad_sort),
                await api.post("/calls/query_stats", expr),
            )

    (sort_status, sort_answer), (expr_status, expr_answer) = run(scenario())
    assert sort_status == 422 and "sort_by[0].field" in sort_answer["reason"]
    assert expr_status == 422 and "query" in expr_answer["reason"]


def test_call_read_returns_the_call_or_null(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            await api.post(COMPLETE, {"batch": _tree()})
            found = await api.post("/call/read", {"project_id": PROJECT, "id": "g1"})
            missing = await api.post("/call/read", {"project_id": PROJECT, "id": "zz"})
            return found, missing

    (status, found), missing = run(scenario())
    assert status == 200 and found["call"]["parent_id"] == "c2"
    assert found["call"]["summary"]["usage"]["gpt-x"]["prompt_tokens"] == 3
    assert missing == (200, {"call": None})


def test_query_stats_counts_with_filter_and_limit(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            await api.post(COMPLETE, {"batch": _tree()})
            stats = "/calls/query_stats"
            return [
                await api.post(stats, {"project_id": PROJECT}),
                await api.post(stats, {"project_id": PROJECT, "filter": {"trace_ids": ["t1"]}}),
                await api.post(stats, {"project_id": PROJECT, "limit": 2}),
            ]

    answers = [(status, body["count"], body["has_more"]) for status, body in run(scenario())]
    assert answers == [(200, 5, False), (200, 4, False), (200, 2, True)]


def test_delete_and_update_change_stored_calls(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            await api.post(COMPLETE, {"batch": _tree()})
            # as weave's servers count: each id asked for once, stored or not, plus the calls
            # deleted below them (g1); retried, the ids asked for still count
            deleted = [await api.post("/calls/delete", {"project_id": PROJECT, "call_ids": ids})
                       for ids in (["c2", "r2", "c2", "nope"], ["c2", "r2", "c2", "nope"])]
            renamed = await api.post(
                "/call/update", {"project_id": PROJECT, "call_id": "c1", "display_name": "first"}
            )
            # a deleted or missing call: {} as weave answers, and nothing comes back to life
            gone = [await api.post("/call/update", {"project_id": PROJECT, "call_id": call_id,
                                                    "display_name": "x"})
                    for call_id in ("r2", "nope")]  # fmt: skip
            unnamed = await api.post("/call/update", {"project_id": PROJECT, "call_id": "c2"})
            return deleted, renamed, gone, unnamed, await api.query()

    deleted, renamed, gone, unnamed, calls = run(scenario())
    assert deleted == [(200, {"num_deleted": 4}), (200, {"num_deleted": 3})]
    assert renamed == (200, {})
    assert gone == [(200, {}), (200, {})]
    assert unnamed[0] == 400 and unnamed[1]["reason"].startswith("display_name: ")
    assert {c["id"]: c["display_name"] for c in calls} == {"r1": None, "c1": "first"}


def test_count_store_validates_and_counts_without_storing(run):
    async def scenario():
        async with serving(None, store="count") as api:
            await api.post(COMPLETE, {"batch": _tree()})
            await api.post(
                "/call/upsert_batch",
                {"batch": [{"mode": "start", "req": {"start": _tree()[0]}}] * 3},
            )
            invalid = await api.post(COMPLETE, {"batch": [{"id": "x"}]})
            return invalid, await api.get("/stats"), await api.query()

    invalid, (_, stats), calls = run(scenario())
    assert invalid[0] == 422 and calls == []
    assert stats["store"] == "count"
    assert (stats["calls_complete"], stats["calls_started"], stats["calls_ended"]) == (5, 3, 0)
    assert stats["rejected_requests"] == 1 and stats["body_bytes"] > 0


def test_graphql_answers_what_weave_init_asks(run, db_path):
    project_q = "query Project($name: String!, $entityName: String!) { project(name: $name, entityName: $entityName) { name } }"
    upsert_m = "mutation UpsertModel($name: String!, $entity: String!) { upsertModel(input: {name: $name, entityName: $entity}) { model { name description } } }"
    viewer_q = "query DefaultEntity { viewer { username defaultEntity { name } } }"
    names = {"name": "proj", "entityName": "ent"}

    async def scenario():
        async with serving(db_path) as api:
            return [
                await api.post("/graphql", {"query": project_q, "variables": names}),
                await api.post("/graphql", {"query": upsert_m, "variables": {"name": "proj", "entity": "ent"}}),
                await api.post("/graphql", {"query": project_q, "variables": names}),
                await api.post("/graphql", {"query": viewer_q}),
                await api.post("/graphql", {"query": "query { somethingElse }"}),
            ]  # fmt: skip

    before, upserted, after, viewer, other = (body for _, body in run(scenario()))
    assert before == {"data": {"project": None}}
    assert upserted["data"]["upsertModel"]["model"]["name"] == "proj"
    assert after["data"]["project"]["name"] == "proj"
    assert viewer["data"]["viewer"]["defaultEntity"]["name"] == "engine"
    assert other["data"] is None and other["errors"][0]["message"]


def test_query_expr_filters_calls_with_offset_and_limit_after_it(run, db_path):
    calls = [complete(f"x{i:02d}", t_s=i, inputs={"n": i, "tag": "even" if i % 2 == 0 else "odd"})
             for i in range(20)]
    over_10 = {"$expr": {"$gt": [{"$convert": {"input": {"$getField": "inputs.n"}, "to": "double"}},
                                 {"$literal": 10}]}}
    even = {"$expr": {"$eq": [{"$getField": "inputs.tag"}, {"$literal": "even"}]}}

    async def scenario():
        async with serving(db_path) as api:
            assert (await api.post(COMPLETE, {"batch": calls}))[0] == 200
            return (
                await api.query(query=over_10),
                await api.query(query=even, offset=2, limit=3),
                await api.post("/calls/query_stats", {"project_id": PROJECT, "query": even}),
            )

    over, even_page, (status, stats) = run(scenario())
    assert _ids(over) == [f"x{i:02d}" for i in range(11, 20)]
    assert _ids(even_page) == ["x04", "x06", "x08"]
    assert status == 200 and stats["count"] == 10
