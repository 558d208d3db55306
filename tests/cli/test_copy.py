"""``engine copy``: a project moved from ``engine serve`` on SQLite to one on ClickHouse
(chDB embedded) over HTTP, end to end: weave 0.54.0's own Evaluation (ops, models, a
dataset table, scorer feedback), a running call, an object with two versions, a price.
Everything reads back the same on the target, and a second copy changes nothing."""

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request

import pytest
from aiohttp import web

from engine.client import RemoteHTTPTraceServer
from engine.server import serve_subprocess
from tests.client.stub import StubServer
from tests.server.test_trace_browser import _EVALUATIONS

pytestmark = [pytest.mark.integration, pytest.mark.peers]

PROJECT = "acme/evals"


def _post(url: str, path: str, body: dict):
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        data = resp.read()
    if path.endswith("stream_query"):
        return [json.loads(line) for line in data.splitlines() if line.strip()]
    return json.loads(data)


def _populate(url: str, tmp_path) -> None:
    (tmp_path / "home").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "WEAVE_", "WF_", "ENGINE_"))}
    env.update(WF_TRACE_SERVER_URL=url, WANDB_BASE_URL=url, HOME=str(tmp_path / "home"),
               WANDB_API_KEY="0123456789abcdef0123456789abcdef01234567",
               WEAVE_PRINT_CALL_LINK="false", NO_PROXY="127.0.0.1,localhost",
               WEAVE_SERVER_CACHE_DIR=str(tmp_path / "weave-cache"))
    subprocess.run([sys.executable, "-c", _EVALUATIONS], env=env, timeout=300, check=True,
                   capture_output=True)
    settings = [_post(url, "/obj/create", {"obj": {"project_id": PROJECT, "object_id": "settings",
                                                   "val": value}})["digest"]
                for value in ({"threshold": 0.5}, {"threshold": 0.7})]  # two versions of one object
    # tags, and aliases: "prod" set on v0 and moved to v1, "old" left on v0
    with RemoteHTTPTraceServer(url) as client:
        client.obj_add_tags({"project_id": PROJECT, "object_id": "settings", "digest": settings[0],
                             "tags": ["baseline", "reviewed"]})
        for digest, aliases in ((settings[0], ["prod", "old"]), (settings[1], ["prod"])):
            client.obj_set_aliases({"project_id": PROJECT, "object_id": "settings",
                                    "digest": digest, "aliases": aliases})
    _post(url, "/call/start", {"start": {"project_id": PROJECT, "id": "still-running",
                                         "op_name": "long_job", "trace_id": "t-running",
                                         "started_at": "2026-12-05T10:00:00Z",
                                         "attributes": {}, "inputs": {"n": 1}}})
    # a call that alone names a file (an image input, as weave stores one) and a table
    with RemoteHTTPTraceServer(url) as client:
        image = client.file_create({"project_id": PROJECT, "name": "image.png",
                                    "content": b"\x89PNG not really"}).digest
    table = _post(url, "/table/create", {"table": {"project_id": PROJECT, "rows": [
        {"x": 1}, {"x": 2}]}})["digest"]
    _post(url, "/call/start", {"start": {
        "project_id": PROJECT, "id": "with-image", "op_name": "describe", "trace_id": "t-image",
        "started_at": "2026-12-05T10:00:01Z", "attributes": {}, "inputs": {
            "image": {"_type": "CustomWeaveType", "weave_type": {"type": "PIL.Image.Image"},
                      "files": {"image.png": image}, "load_op": None},
            "rows": f"weave:///{PROJECT}/table/{table}"}}})
    # and one naming a file and a table the server never got: left out, said, not fatal
    _post(url, "/call/start", {"start": {
        "project_id": PROJECT, "id": "names-missing", "op_name": "describe", "trace_id": "t-gone",
        "started_at": "2026-12-05T10:00:02Z", "attributes": {}, "inputs": {
            "image": {"_type": "CustomWeaveType", "weave_type": {"type": "PIL.Image.Image"},
                      "files": {"image.png": "f" * 43}, "load_op": None},
            "rows": f"weave:///{PROJECT}/table/{'0' * 64}"}}})
    some_call = _post(url, "/calls/stream_query", {"project_id": PROJECT, "limit": 1})[0]["id"]
    _post(url, "/feedback/create", {"project_id": PROJECT, "feedback_type": "wandb.note.1",
                                    "weave_ref": f"weave:///{PROJECT}/call/{some_call}",
                                    "payload": {"note": "looks wrong"}})
    _post(url, "/project/ttl_settings/update", {"project_id": PROJECT, "retention_days": 3650})
    _post(url, "/cost/create", {"project_id": PROJECT, "costs": {"gpt-x": {
        "prompt_token_cost": 0.01, "completion_token_cost": 0.03,
        "effective_date": "2026-01-01T00:00:00Z"}}})


def _snapshot(url: str) -> dict:
    calls = sorted(_post(url, "/calls/stream_query", {"project_id": PROJECT}), key=lambda c: c["id"])
    for call in calls:
        call.pop("storage_size_bytes", None), call.pop("total_storage_size_bytes", None)
    objs = sorted((o["object_id"], o["version_index"], o["digest"], o["kind"],
                   o["base_object_class"], json.dumps(o["val"], sort_keys=True))
                  for o in _post(url, "/objs/query", {"project_id": PROJECT})["objs"])
    tables = {}
    for obj in _post(url, "/objs/query", {"project_id": PROJECT})["objs"]:
        rows = obj["val"].get("rows") if isinstance(obj["val"], dict) else None
        if isinstance(rows, str) and "/table/" in rows:
            digest = rows.rsplit("/", 1)[1]
            tables[digest] = [r["val"] for r in _post(url, "/table/query",
                                                      {"project_id": PROJECT, "digest": digest})["rows"]]
    feedback = sorted((f["id"], f["weave_ref"], f["feedback_type"], json.dumps(f["payload"], sort_keys=True))
                      for f in _post(url, "/feedback/query", {"project_id": PROJECT})["result"])
    costs = sorted((c["llm_id"], c["prompt_token_cost"], c["completion_token_cost"], c["effective_date"])
                   for c in _post(url, "/cost/query", {"project_id": PROJECT})["results"])
    named = next(c for c in calls if c["id"] == "with-image")["inputs"]
    with urllib.request.urlopen(urllib.request.Request(url + "/file/content", data=json.dumps(
            {"project_id": PROJECT, "digest": named["image"]["files"]["image.png"]}).encode(),
            headers={"Content-Type": "application/json"}), timeout=60) as resp:
        image = resp.read()
    only_called = [r["val"] for r in _post(url, "/table/query", {
        "project_id": PROJECT, "digest": named["rows"].rsplit("/", 1)[1]})["rows"]]
    retention = _post(url, "/project/ttl_settings/read", {"project_id": PROJECT})["retention_days"]
    labels = sorted((o["object_id"], o["version_index"], sorted(o.get("tags") or []),
                     sorted(o.get("aliases") or []))
                    for o in _post(url, "/objs/query", {"project_id": PROJECT,
                                                        "include_tags_and_aliases": True})["objs"]
                    if o.get("tags") or set(o.get("aliases") or []) - {"latest"})
    return {"calls": calls, "objects": objs, "tables": tables, "feedback": feedback, "costs": costs,
            "image": image, "only_called": only_called, "retention": retention, "labels": labels}


def _copy(source: str, target: str, *extra: str, **keys: str) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}, **keys}
    return subprocess.run([sys.executable, "-m", "engine", "copy", "--from", source, "--to", target,
                           *extra], capture_output=True, text=True, timeout=300, env=env)


def test_a_project_copied_from_sqlite_to_clickhouse_reads_back_the_same(tmp_path):
    with serve_subprocess(tmp_path / "source.db") as source, \
            serve_subprocess(store=f"chdb:///{tmp_path / 'target'}") as target:
        _populate(source, tmp_path)
        before = _snapshot(source)
        assert len(before["calls"]) > 90 and len(before["tables"]) >= 2  # the dataset, the results
        assert before["image"] == b"\x89PNG not really" and before["only_called"] == [{"x": 1}, {"x": 2}]
        assert before["retention"] == 3650
        assert {f[2] for f in before["feedback"]} >= {"wandb.note.1", "wandb.runnable.exact"}
        assert [o[:2] for o in before["objects"] if o[0] == "settings"] == [("settings", 0), ("settings", 1)]
        assert before["labels"] == [("settings", 0, ["baseline", "reviewed"], ["old"]),
                                    ("settings", 1, [], ["latest", "prod"])]

        first = _copy(source, target)  # every project the source lists
        assert first.returncode == 0, first.stderr
        assert f"{PROJECT}: {len(before['calls'])} calls" in first.stdout
        assert "; 4 tags/aliases" in first.stdout and "not copied" not in first.stdout
        assert f"2 named but not on the source either: file {'f' * 43}, table {'0' * 64}" in first.stdout
        after = _snapshot(target)
        assert after == before
        running = next(c for c in after["calls"] if c["id"] == "still-running")
        assert running["ended_at"] is None and running["summary"]["weave"]["status"] == "running"

        again = _copy(source, target, "--project", PROJECT)  # resumes: nothing added
        assert again.returncode == 0, again.stderr
        assert "1 prices (1 already there)" not in again.stdout and "0 prices (1 already there)" in again.stdout
        assert _snapshot(target) == before


def test_copy_refuses_the_same_server_and_names_an_unreachable_one(tmp_path):
    with serve_subprocess(tmp_path / "a.db") as url:
        same = _copy(url, url + "/")
        assert same.returncode == 2 and "same server" in same.stderr
        # the same store under another URL (it once copied a project onto itself)
        other_name = url.replace("127.0.0.1", "localhost")
        same = _copy(url, other_name, "--project", PROJECT)
        assert same.returncode == 2 and "same server (one store" in same.stderr
        gone = _copy(url, "http://127.0.0.1:9")
        assert gone.returncode == 1 and "127.0.0.1:9" in gone.stderr
        assert len(gone.stderr.strip().splitlines()) == 1


def test_copy_takes_each_server_s_key_from_its_own_variable(tmp_path):
    with serve_subprocess(tmp_path / "a.db", api_key="source-key") as source, \
            serve_subprocess(tmp_path / "b.db", api_key="target-key") as target:
        _post_keyed = urllib.request.Request(source + "/obj/create", data=json.dumps({"obj": {
            "project_id": PROJECT, "object_id": "settings", "val": {"k": 1}}}).encode(), headers={
            "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(b"api:source-key").decode()})
        urllib.request.urlopen(_post_keyed, timeout=30).close()
        refused = _copy(source, target, "--project", PROJECT)
        assert refused.returncode == 1 and "needs an API key" in refused.stderr
        # the variables copy reads (before: "set ENGINE_API_KEY or WANDB_API_KEY", and copy
        # ignores WANDB_API_KEY)
        assert "set $ENGINE_COPY_FROM_API_KEY or $ENGINE_API_KEY" in refused.stderr
        assert "source-key" not in refused.stderr + refused.stdout
        wrong = _copy(source, target, "--project", PROJECT, ENGINE_COPY_FROM_API_KEY="source-key",
                      ENGINE_API_KEY="wrong-key")
        assert wrong.returncode == 1 and "refused the API key from $ENGINE_API_KEY" in wrong.stderr
        assert "wrong-key" not in wrong.stderr
        done = _copy(source, target, "--project", PROJECT, ENGINE_COPY_FROM_API_KEY="source-key",
                     ENGINE_COPY_TO_API_KEY="target-key")
        assert done.returncode == 0, done.stderr
        assert "1 object versions" in done.stdout


def test_copy_refuses_a_project_the_source_does_not_hold(tmp_path):
    with serve_subprocess(tmp_path / "a.db") as source, serve_subprocess(tmp_path / "b.db") as target:
        _post(source, "/obj/create", {"obj": {"project_id": PROJECT, "object_id": "settings",
                                              "val": {"k": 1}}})
        typo = _copy(source, target, "--project", "acme/evalz")
        assert typo.returncode == 2, typo.stderr
        assert "has no calls or objects in project acme/evalz; did you mean acme/evals?" in typo.stderr
        with urllib.request.urlopen(target + "/ui/projects", timeout=30) as resp:
            assert json.loads(resp.read())["projects"] == []  # nothing written
        copied = _copy(source, target, "--project", PROJECT)
        assert copied.returncode == 0 and f"{PROJECT}: 0 calls, 1 object versions" in copied.stdout


def test_sigterm_stops_a_copy_as_ctrl_c_does():
    """`timeout`, a scheduler: SIGTERM while a request to the source is unanswered. One
    line and 143, as the demo's (a rerun resumes: the target keeps one row per id)."""
    asked, released = threading.Event(), threading.Event()

    async def source(request: web.Request) -> web.Response:
        if request.path == "/server_info":
            return web.json_response({"store_id": "source"})
        if request.path == "/ui/projects":
            return web.json_response({"projects": [{"project_id": PROJECT}]})
        asked.set()  # the copy of the project began: hold it there
        await asyncio.get_running_loop().run_in_executor(None, released.wait, 60)
        return web.json_response({"objs": []})

    async def target(request: web.Request) -> web.Response:
        return web.json_response({"store_id": "target"} if request.path == "/server_info" else {})

    with StubServer(source) as src, StubServer(target) as dst:
        proc = subprocess.Popen([sys.executable, "-m", "engine", "copy", "--from", src.url, "--to",
                                 dst.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")})
        try:
            assert asked.wait(60), "the copy never asked the source for the project"
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        finally:
            released.set()
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 143, err
    assert "Traceback" not in err and err.splitlines() == ["engine: terminated (SIGTERM)"], err
