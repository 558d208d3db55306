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
            await api.post("/feedback/batch/create", batch)  # resent: replaces, adds nothing
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


def test_feedback_bad_input_answers_4xx_with_reason_and_refs_elsewhere_are_refused(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            status, body = await api.post(
                "/feedback/create", feedback("x", weave_ref="weave:///o/p/call/1")
            )
            assert status == 422 and "weave_ref" in body["reason"]
            internal = feedback("x", weave_ref=f"weave-trace-internal:///{PROJECT}/call/1")
            assert (await api.post("/feedback/create", internal))[0] == 422
            # text that is no ref names no other project: stored, as weave stores it
            assert (await api.post("/feedback/create", feedback("x", weave_ref="not a ref")))[0] == 200
            bad = {"project_id": PROJECT, "query": {"$expr": {"$regex": ["a", "b"]}}}
            status, body = await api.post("/feedback/query", bad)
            assert status == 422 and "$regex" in body["reason"]
            by_type = {"$expr": {"$eq": [{"$getField": "feedback_type"}, {"$literal": "note"}]}}
            status, body = await api.post("/feedback/purge", {"project_id": PROJECT, "query": by_type})
            assert status == 400 and "by id only" in body["reason"]  # weave's safety rule
            reaction = {**feedback("x"), "feedback_type": "wandb.reaction.1", "payload": {"emoji": "ab"}}
            status, body = await api.post("/feedback/create", reaction)
            assert status == 400 and "payload.emoji" in body["reason"]
            assert (await api.post("/feedback/create", {"project_id": PROJECT}))[0] == 422

    run(scenario())


def test_a_field_feedback_and_costs_do_not_have_is_a_400_naming_it(run, db_path):
    nope = {"$expr": {"$or": [by_ref()["$expr"], {"$eq": [{"$getField": "nope"}, {"$literal": 1}]}]}}
    asks = [("/feedback/query", {"fields": ["id", "zzz"]}), ("/feedback/query", {"query": nope}),
            ("/feedback/query", {"sort_by": [{"field": "nope.x", "direction": "asc"}]}),
            ("/cost/query", {"fields": ["nope"]})]  # fmt: skip

    async def scenario():
        async with serving(db_path) as api:
            return [await api.post(path, {"project_id": PROJECT, **ask}) for path, ask in asks]

    answers = run(scenario())
    assert [status for status, _ in answers] == [400] * 4
    assert [body["reason"].split("; ")[0] for _, body in answers] == [
        "fields[1]: unknown field 'zzz'", "query.$expr.$or[1].$eq[0].$getField: unknown field 'nope'",
        "sort_by[0].field: unknown field 'nope.x'", "fields[0]: unknown field 'nope'",
    ]  # fmt: skip


def test_reactions_store_their_alias_and_toneless_form(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            reaction = {**feedback("x"), "feedback_type": "wandb.reaction.1",
                        "payload": {"emoji": "👍🏽"}}  # fmt: skip
            return await api.post("/feedback/create", reaction)

    status, made = run(scenario())
    assert status == 200 and made["payload"] == {
        "emoji": "👍🏽", "alias": ":thumbs_up_medium_skin_tone:", "detoned": "👍",
        "detoned_alias": ":thumbs_up:",
    }  # fmt: skip


def test_replacing_a_missing_feedback_creates_it_as_weave_does(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            status, made = await api.post(
                "/feedback/replace", {**feedback("x"), "feedback_id": "gone"}
            )
            _, found = await api.post("/feedback/query", {"project_id": PROJECT})
            return status, made, found["result"]

    status, made, found = run(scenario())
    assert status == 200 and [f["id"] for f in found] == [made["id"]]

    run(scenario())


def test_costs_create_query_purge_by_id(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            price = {"prompt_token_cost": 1e-6, "completion_token_cost": 2e-6,
                     "effective_date": "2026-01-01T00:00:00Z"}  # fmt: skip
            create = {"project_id": PROJECT, "costs": {"gpt-x": price, "gpt-y": price}}
            status, made = await api.post("/cost/create", create)
            assert status == 200 and [llm for _, llm in made["ids"]] == ["gpt-x", "gpt-y"]
            query = {"project_id": PROJECT, "fields": ["llm_id", "prompt_token_cost"],
                     "query": {"$expr": {"$eq": [{"$getField": "llm_id"}, {"$literal": "gpt-y"}]}}}  # fmt: skip
            _, found = await api.post("/cost/query", query)
            assert found == {"results": [{"llm_id": "gpt-y", "prompt_token_cost": 1e-6}]}
            assert (await api.post("/cost/purge", {"project_id": PROJECT, "query": query["query"]}))[0] == 400
            by_id = {"$expr": {"$eq": [{"$getField": "id"}, {"$literal": made["ids"][1][0]}]}}
            assert (await api.post("/cost/purge", {"project_id": PROJECT, "query": by_id}))[0] == 200
            _, rest = await api.post("/cost/query", {"project_id": PROJECT})
            assert [r["llm_id"] for r in rest["results"]] == ["gpt-x"]
            assert rest["results"][0]["prompt_token_cost_unit"] == "USD"  # the default unit
            assert (await api.post("/cost/create", {"project_id": PROJECT, "costs": {}}))[0] == 422

    run(scenario())
