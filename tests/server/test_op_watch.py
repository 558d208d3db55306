"""Calls naming weave ops the server does not have (weave's disk cache kept them from it):
looked up once after a grace period, counted in /stats, said once per project."""

import logging
import time

import aiohttp

from engine.server._app import start_server
from engine.server._state import STATE
from tests.server.harness import PROJECT, complete, run_on, start, upsert_batch


def test_ops_calls_name_that_the_store_lacks_are_counted_and_said_once(tmp_path, caplog):
    async def scenario():
        runner, url = await start_server(host="127.0.0.1", port=0, db_path=tmp_path / "t.db")
        try:
            async with aiohttp.ClientSession() as http:
                async def post(path, body):
                    async with http.post(url + path, json=body) as resp:
                        assert resp.status == 200, await resp.text()
                        return await resp.json()

                present = (await post("/obj/create", {"obj": {
                    "project_id": PROJECT, "object_id": "predict", "val": {"_type": "Op"}}}))["digest"]
                have = f"weave:///{PROJECT}/op/predict:{present}"
                lack = f"weave:///{PROJECT}/op/score:{'d' * 43}"
                await post("/call/upsert_batch", upsert_batch(
                    ("start", start("a", op_name=have)), ("start", start("b", op_name=lack)),
                    ("start", start("c", op_name="plain_op"))))
                await post(f"/v2/{PROJECT}/calls/complete", {"batch": [
                    complete("d", op_name=lack), complete("e", op_name=f"weave:///{PROJECT}/op/other:x")]})
                watch = runner.app[STATE].op_watch
                too_soon = await watch.look()  # inside the grace period: not looked up yet
                missing = await watch.look(now=time.monotonic() + 60)
                again = await watch.look(now=time.monotonic() + 120)
                async with http.get(url + "/stats") as resp:
                    stats = await resp.json()
                return too_soon, missing, again, stats
        finally:
            await runner.cleanup()

    with caplog.at_level(logging.WARNING, logger="engine.server"):
        too_soon, missing, again, stats = run_on("asyncio", scenario())
    assert too_soon == [] and again == []
    assert sorted(ref for _, ref in missing) == [f"weave:///{PROJECT}/op/other:x",
                                                 f"weave:///{PROJECT}/op/score:{'d' * 43}"]
    assert stats["ops_missing"] == 2
    said = [r.getMessage() for r in caplog.records if "does not have" in r.getMessage()]
    assert len(said) == 1 and PROJECT in said[0] and "WEAVE_SERVER_CACHE_DIR" in said[0]
