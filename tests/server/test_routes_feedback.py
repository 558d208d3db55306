"""Feedback and costs against ``engine serve``: create, batch with client ids, query, purge, replace."""

from tests.server.harness import PROJECT, serving

REF = f"weave:///{PROJECT}/call/0192"


def feedback(note, **extra):
    return {"project_id": PROJECT, "weave_ref": REF, "feedback_type": "note",
            "payload": {"note": note}, **extra}  # fmt: skip


def by_ref(ref=REF):
    return {"$expr": {"$eq": [{"$getField": "weave_ref"}, {"$literal": ref}]}}


def test_feedback_create_batch_query_replace_purge(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            status, one = await api.post("/feedback/create", feedback("first"))
            assert status == 200 and one["payload"] == {"note": "first"}
            batch = {"batch": [feedback("b1", id="id-1"), feedback("b2", id="id-2")]}
            _, made = await api.post("/feedback/batch/create", batch)
            assert [r["id"] for r in made["res"]] == ["id-1", "id-2"]
            assert (await api.post("/feedback/batch/create", batch))[1] == made  # resent: no dupes
            query = {"project_id": PROJECT, "query": by_ref(), "fields": ["id", "payload.note"],
                     "sort_by": [{"field": "payload.note", "direction": "desc"}]}  # fmt: skip
            _, found = await api.post("/feedback/query", query)
            assert found["total_count"] == 3
            assert [r["payload.note"] for r in found["result"]] == ["first", "b2", "b1"]
            replace = {**feedback("better"), "feedback_id": "id-1"}
            status, replaced = await api.post("/feedback/replace", replace)
            assert status == 200 and replaced["id"] != "id-1"
            purge = {"$expr": {"$eq": [{"$getField": "id"}, {"$literal": "id-2"}]}}
            assert await api.post("/feedback/purge", {"project_id": PROJECT, "query": purge}) == (
                200,
                {},
            )
            _, left = await api.post("/feedback/query", {"project_id": PROJECT})
            assert sorted(r["payload"]["note"] for r in left["result"]) == ["better", "first"]

    run(scenario())


def test_feedback_bad_input_answers_4xx_with_reason(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            status, body = await api.post(
                "/feedback/create", feedback("x", weave_ref="weave:///o/p/call/1")
            )
            assert status == 422 and "weave_ref" in body["reason"]
            bad = {"project_id": PROJECT, "query": {"$expr": {"$regex": ["a", "b"]}}}
            status, body = await api.post("/feedback/query", bad)
            assert status == 422 and "$regex" in body["reason"]
            status, body = await api.post(
                "/feedback/replace", {**feedback("x"), "feedback_id": "gone"}
            )
            assert status == 404 and "gone" in body["reason"]
            assert (await api.post("/feedback/create", {"project_id": PROJECT}))[0] == 422

    run(scenario())


def test_costs_create_query_purge_and_idempotent_ids(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            price = {"prompt_token_cost": 1e-6, "completion_token_cost": 2e-6,
                     "effective_date": "2026-01-01T00:00:00Z"}  # fmt: skip
            create = {"project_id": PROJECT, "costs": {"gpt-x": price, "gpt-y": price}}
            status, made = await api.post("/cost/create", create)
            assert status == 200 and [llm for llm, _ in made["ids"]] == ["gpt-x", "gpt-y"]
            assert (await api.post("/cost/create", create))[1] == made
            query = {"project_id": PROJECT, "fields": ["llm_id", "prompt_token_cost"],
                     "query": {"$expr": {"$eq": [{"$getField": "llm_id"}, {"$literal": "gpt-y"}]}}}  # fmt: skip
            _, found = await api.post("/cost/query", query)
            assert found == {"results": [{"llm_id": "gpt-y", "prompt_token_cost": 1e-6}]}
            purge = {"project_id": PROJECT, "query": query["query"]}
            assert (await api.post("/cost/purge", purge))[0] == 200
            _, rest = await api.post("/cost/query", {"project_id": PROJECT})
            assert [r["llm_id"] for r in rest["results"]] == ["gpt-x"]
            assert (await api.post("/cost/create", {"project_id": PROJECT, "costs": {}}))[0] == 422

    run(scenario())
