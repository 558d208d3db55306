"""Ingest routes: every shape stores calls once, merges halves in any order, never duplicates."""

from engine.common._machine import machine_token
from tests.server.harness import PROJECT, complete, end, serving, start, upsert_batch


def test_server_info_and_health_answer_with_both_fields_and_encodings(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            info_status, info = await api.get("/server_info")
            health_status, health = await api.get("/health")
            return info_status, info, health_status, health

    info_status, info, health_status, health = run(scenario())
    assert info_status == 200 and health_status == 200
    assert set(info) >= {"min_required_weave_python_version", "trace_server_version"}
    assert info["accepts_encodings"] == ["zstd", "gzip"]
    assert info["machine"] == machine_token()  # a sender on this machine sends plain bodies
    assert len(info["store_id"]) == 32  # the file's own id (weave's cache is keyed by it)
    assert health == {"status": "ok", "store": "sqlite"}


def test_call_start_then_end_merge_into_one_finished_call(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            started = await api.post("/call/start", {"start": start("c1")})
            ended = await api.post("/call/end", {"end": end("c1")})
            return started, ended, await api.query()

    started, ended, calls = run(scenario())
    assert started == (200, {"id": "c1", "trace_id": "trace-c1"})
    assert ended == (200, {})
    assert [c["id"] for c in calls] == ["c1"]
    assert calls[0]["output"] == {"answer": "a-c1"} and calls[0]["inputs"] == {"question": "q-c1"}
    assert calls[0]["ended_at"] == "2026-01-02T03:04:06Z"


def test_call_start_without_ids_gets_server_assigned_ids(run, db_path):
    body = start("x")
    del body["id"], body["trace_id"]

    async def scenario():
        async with serving(db_path) as api:
            return await api.post("/call/start", {"start": body})

    status, ids = run(scenario())
    assert status == 200 and len(ids["id"]) == 36 and ids["id"] != ids["trace_id"]


def test_end_before_start_is_kept_hidden_then_merged(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            await api.post("/call/upsert_batch", upsert_batch(("end", end("late"))))
            before = await api.query()
            await api.post("/call/upsert_batch", upsert_batch(("start", start("late"))))
            return before, await api.query()

    before, after = run(scenario())
    assert before == []
    assert len(after) == 1
    assert after[0]["op_name"].endswith("predict:v1") and after[0]["output"] == {"answer": "a-late"}


def test_resent_upsert_batch_stores_no_duplicates(run, db_path):
    batch = upsert_batch(
        *[(m, f(f"c{i}")) for i in range(20) for m, f in (("start", start), ("end", end))]
    )

    async def scenario():
        async with serving(db_path) as api:
            first = await api.post("/call/upsert_batch", batch)
            second = await api.post("/call/upsert_batch", batch)
            return first, second, await api.query()

    first, second, calls = run(scenario())
    assert first[0] == second[0] == 200
    assert first[1]["res"][0] == {"id": "c0", "trace_id": "trace-c0"} and first[1]["res"][1] == {}
    assert sorted(c["id"] for c in calls) == sorted(f"c{i}" for i in range(20))


def test_complete_batch_is_idempotent_and_retry_keeps_one_row_per_id(run, db_path):
    body = {"batch": [complete(f"k{i}") for i in range(5)]}

    async def scenario():
        async with serving(db_path) as api:
            answers = [await api.post("/v2/ent/proj/calls/complete", body) for _ in range(3)]
            return answers, await api.query()

    answers, calls = run(scenario())
    assert answers == [(200, {})] * 3
    assert len(calls) == 5 and all(c["ended_at"] and c["summary"] for c in calls)


def test_batch_with_one_invalid_item_stores_nothing(run, db_path):
    bad = start("bad")
    del bad["op_name"]
    body = upsert_batch(("start", start("good")), ("start", bad))

    async def scenario():
        async with serving(db_path) as api:
            return await api.post("/call/upsert_batch", body), await api.query()

    (status, answer), calls = run(scenario())
    assert status == 422 and "op_name" in answer["reason"] and "batch[1]" in answer["reason"]
    assert calls == []


def test_v2_start_and_end_merge_and_check_the_path_project(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            started = await api.post("/v2/ent/proj/call/start", {"start": start("v")})
            ended = await api.post("/v2/ent/proj/call/end", {"end": end("v", trace_id="trace-v")})
            wrong = await api.post("/v2/ent/other/call/start", {"start": start("w")})
            return started, ended, wrong, await api.query()

    started, ended, wrong, calls = run(scenario())
    assert started == (200, {"id": "v", "trace_id": "trace-v"}) and ended == (200, {})
    assert wrong[0] == 422 and "start.project_id" in wrong[1]["reason"]
    assert [(c["id"], c["output"]) for c in calls] == [("v", {"answer": "a-v"})]


def test_project_id_without_entity_is_rejected_naming_the_field(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            return await api.post("/call/start", {"start": start("p", project_id="no-slash")})

    status, answer = run(scenario())
    assert status == 422 and "start.project_id" in answer["reason"]


def test_calls_are_stored_per_project(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            await api.post(
                "/v2/ent/a/calls/complete", {"batch": [complete("x", project_id="ent/a")]}
            )
            await api.post(
                "/v2/ent/b/calls/complete", {"batch": [complete("x", project_id="ent/b")]}
            )
            return await api.query("ent/a"), await api.query("ent/b"), await api.query(PROJECT)

    in_a, in_b, in_other = run(scenario())
    assert [c["project_id"] for c in in_a + in_b] == ["ent/a", "ent/b"] and in_other == []
