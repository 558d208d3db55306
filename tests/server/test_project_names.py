"""Project names no client could have meant (engine/common/_project.py; docs/serve.md, "The
trace browser and what clients send"): every route that adds data refuses them at the
store's one door, with the same 422 naming the project; one an earlier version stored can
still be read and deleted."""

from __future__ import annotations

import aiohttp

from tests.server.harness import complete, serving, start, store_earlier, upsert_batch

DOTS = "e/.."
PRICE = {"prompt_token_cost": 1e-6, "completion_token_cost": 2e-6,
         "effective_date": "2026-01-01T00:00:00Z"}  # fmt: skip


def _writes(project: str) -> dict[str, dict]:
    """A body for each JSON route that adds data, naming ``project``."""
    return {
        "/call/start": {"start": start("s", project_id=project)},
        "/call/upsert_batch": upsert_batch(("start", start("u", project_id=project))),
        "/obj/create": {"obj": {"project_id": project, "object_id": "o", "val": 1}},
        "/table/create": {"table": {"project_id": project, "rows": [{"a": 1}]}},
        "/feedback/create": {"project_id": project, "weave_ref": f"weave:///{project}/call/c",
                             "feedback_type": "note", "payload": {"note": "n"}},
        "/cost/create": {"project_id": project, "costs": {"m": PRICE}},
    }


async def _upload(api, project: str) -> tuple[int, dict]:
    form = aiohttp.FormData()
    form.add_field("project_id", project)
    form.add_field("file", b"content", filename="blob.bin")
    async with api.session.post(api.url + "/file/create", data=form) as resp:
        return resp.status, await resp.json()


def test_every_route_that_adds_data_refuses_a_project_no_client_could_mean(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            answers = {path: await api.post(path, body) for path, body in _writes(DOTS).items()}
            answers["/file/create"] = await _upload(api, DOTS)
            # a path cannot hold "..": a blank project instead, the space encoded as a client does
            blank = await api.post("/v2/e/%20/calls/complete", {"batch": [complete("v", project_id="e/ ")]})
            _, listed = await api.get("/ui/projects")
            return answers, blank, listed

    answers, blank, listed = run(scenario())
    assert {path: status for path, (status, _) in answers.items()} == dict.fromkeys(answers, 422)
    for path, (_, body) in answers.items():
        assert "project 'e/..' has the project '..', which no link can hold" in body["reason"], path
        assert 'writes to it are refused: write it "entity/project"' in body["reason"], path
    assert blank[0] == 422 and "project 'e/ ' has a blank project" in blank[1]["reason"]
    assert listed == {"projects": []}


def test_a_project_so_named_stored_earlier_can_be_read_and_deleted(run, db_path):
    store_earlier(db_path, DOTS, "old")

    async def scenario():
        async with serving(db_path) as api:
            read = [c["id"] for c in await api.query(DOTS)]
            deleted = await api.post("/calls/delete", {"project_id": DOTS, "call_ids": ["old"]})
            return read, deleted, await api.query(DOTS)

    assert run(scenario()) == (["old"], (200, {"num_deleted": 1}), [])
