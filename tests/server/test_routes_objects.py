"""Objects and ops against ``engine serve``: digests, versions, aliases, queries, deletes."""

from engine.server._digest import value_digest
from tests.server.harness import PROJECT, serving

VAL = {"b": 2, "a": [1, "x", {"z": None}], "name": "naïve"}
OP_VAL = {"_type": "CustomWeaveType", "weave_type": {"type": "Op"}, "files": {"obj.py": "d"}}


def obj(object_id="thing", val=VAL, **extra):
    return {"obj": {"project_id": PROJECT, "object_id": object_id, "val": val, **extra}}


def test_object_create_read_query_and_versions(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            status, first = await api.post("/obj/create", obj())
            assert status == 200 and first == {"digest": value_digest(VAL), "object_id": "thing"}
            assert (await api.post("/obj/create", obj()))[1] == first  # idempotent
            _, second = await api.post("/obj/create", obj(val={"v": 2}))
            for version, digest, index in (("latest", second["digest"], 1), ("v0", first["digest"], 0),
                                           (first["digest"], first["digest"], 0)):  # fmt: skip
                status, body = await api.post("/obj/read", {"project_id": PROJECT,
                                              "object_id": "thing", "digest": version})  # fmt: skip
                assert status == 200, body
                assert body["obj"]["digest"] == digest and body["obj"]["version_index"] == index
                assert (
                    body["obj"]["is_latest"] == int(index == 1) and body["obj"]["kind"] == "object"
                )
            status, body = await api.post("/objs/query", {"project_id": PROJECT})
            assert [o["version_index"] for o in body["objs"]] == [0, 1]
            assert body["objs"][0]["val"] == VAL
            latest = {"project_id": PROJECT, "filter": {"latest_only": True}}
            assert [o["digest"] for o in (await api.post("/objs/query", latest))[1]["objs"]] == [
                second["digest"]
            ]

    run(scenario())


def test_object_delete_hides_version_and_moves_latest(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            _, first = await api.post("/obj/create", obj())
            _, second = await api.post("/obj/create", obj(val={"v": 2}))
            body = {"project_id": PROJECT, "object_id": "thing", "digests": [second["digest"]]}
            status, res = await api.post("/obj/delete", body)
            assert status == 200 and res["num_deleted"] == 1
            read = {"project_id": PROJECT, "object_id": "thing", "digest": "latest"}
            assert (await api.post("/obj/read", read))[1]["obj"]["digest"] == first["digest"]
            status, res = await api.post("/obj/delete", body)
            assert status == 404 and "not found" in res["reason"]

    run(scenario())


def test_object_bad_input_answers_4xx_with_reason(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            status, body = await api.post("/obj/create", obj(expected_digest="nope"))
            assert status == 409 and "expected_digest" in body["reason"]
            status, body = await api.post("/obj/create", {"obj": {"project_id": PROJECT}})
            assert status == 422 and "object_id" in body["reason"]
            assert (await api.post("/obj/create", b"{not json"))[0] == 400
            read = {"project_id": PROJECT, "object_id": "missing", "digest": "latest"}
            status, body = await api.post("/obj/read", read)
            assert status == 404 and "missing" in body["reason"]
            sort = {"project_id": PROJECT, "sort_by": [{"field": "val", "direction": "asc"}]}
            assert (await api.post("/objs/query", sort))[0] == 422

    run(scenario())


def test_object_ids_weave_refuses_are_refused_on_every_route_that_creates_objects(run, db_path):
    """weave's object_id_validator: 1..128 of letters (any script), digits, '_', '.', '-'."""

    async def scenario():
        async with serving(db_path) as api:
            refused = [await api.post("/obj/create", obj(object_id))
                       for object_id in ("a/b", "a:b", "bad id/with slash", "x" * 129, "")]  # fmt: skip
            op = {"op_obj": {"project_id": PROJECT, "object_id": "a:b", "val": OP_VAL}}
            refused.append(await api.post("/op/create", op))
            for path, body in (("datasets", {"name": "!!!", "rows": [{"a": 1}]}),
                               ("models", {"name": "m" * 129, "source_code": "x = 1\n"}),
                               ("scorers", {"name": "s" * 125, "op_source_code": "x = 1\n"})):  # fmt: skip
                refused.append(await api.post(f"/v2/{PROJECT}/{path}", body))
            accepted = [await api.post("/obj/create", obj(object_id))
                        for object_id in ("x" * 128, "café-1.v2_x")]  # fmt: skip
            _, objs = await api.post("/objs/query", {"project_id": PROJECT})
            return refused, accepted, [o["object_id"] for o in objs["objs"]]

    refused, accepted, stored = run(scenario())
    assert [status for status, _ in refused] == [400] * 9
    assert [body["reason"].split(":")[0] for _, body in refused] == (
        ["obj.object_id"] * 5 + ["op_obj.object_id"] + ["name"] * 3
    )
    assert "['/']" in refused[0][1]["reason"] and "1..128" in refused[3][1]["reason"]
    assert [status for status, _ in accepted] == [200, 200]
    assert stored == ["x" * 128, "café-1.v2_x"]


def test_ops_old_and_v2_routes(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            op = {"op_obj": {"project_id": PROJECT, "object_id": "predict", "val": OP_VAL}}
            status, created = await api.post("/op/create", op)
            assert status == 200
            read = {"project_id": PROJECT, "name": "predict", "digest": created["digest"]}
            assert (await api.post("/op/read", read))[1]["op_obj"]["kind"] == "op"
            _, ops = await api.post("/ops/query", {"project_id": PROJECT})
            assert [o["object_id"] for o in ops["op_objs"]] == ["predict"]
            assert (await api.post("/op/create", {"op_obj": {**op["op_obj"], "val": VAL}}))[
                0
            ] == 422
            src = {"name": "score", "source_code": "def score():\n    return 1\n"}
            status, v2 = await api.post("/v2/ent/proj/ops", src)
            assert status == 200 and v2["object_id"] == "score" and v2["version_index"] == 0
            assert (await api.post("/v2/ent/proj/ops", src))[1] == v2
            status, got = await api.get(f"/v2/ent/proj/ops/score/versions/{v2['digest']}")
            assert status == 200 and got["code"] == src["source_code"]
            async with api.session.get(api.url + "/v2/ent/proj/ops?limit=10") as resp:
                assert resp.content_type == "application/jsonl"
                lines = (await resp.read()).splitlines()
            assert len(lines) == 2
            async with api.session.delete(api.url + "/v2/ent/proj/ops/score") as resp:
                assert resp.status == 200 and (await resp.json())["num_deleted"] == 1
            assert (await api.get(f"/v2/ent/proj/ops/score/versions/{v2['digest']}"))[0] == 404

    run(scenario())
