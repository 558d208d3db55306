"""Auth and tenancy of ``engine serve``: one test per rule (docs/serve.md, "Keys").

1. keys come from the environment or a keys file, never the command line;
2. with keys, every route needs one (and a bad one is a 401 that never echoes it), but
   ``GET /health`` and ``GET /ready``: liveness and readiness probes carry no key;
3. a key reads and writes only the projects its line grants (``ro`` keys never write),
   whichever route names the project;
4. a keys file others may read, or a malformed one, is refused with the fix;
5. without keys, only loopback is served, and the start line says so.
The relay's rules are in ``tests/relay/test_relay_auth.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from engine.common._errors import ConfigError
from engine.server import serve_subprocess, start_server
from engine.server._app import build_app
from engine.server._auth import load_key_ring, read_keys_file
from tests.server.harness import basic_auth, complete, run_on, serving

KEY_A = "key-a-0123456789abcdef"  # rw team-a/*
KEY_RO = "key-ro-0123456789abcdef"  # ro team-a/dash
KEY_B = "key-b-0123456789abcdef"  # rw team-b/p


@pytest.fixture
def keys_file(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"# test keys\n{KEY_A} rw team-a/*\n{KEY_RO} ro team-a/dash\n"
                    f"{KEY_B}   rw   team-b/p   # one project\n")  # fmt: skip
    path.chmod(0o600)
    return path


def test_a_key_on_the_command_line_is_refused_with_the_way_to_give_it(tmp_path):
    for command in ("serve", "relay"):
        result = subprocess.run(
            [sys.executable, "-m", "engine", command, "--api-key", "visible-in-ps"],
            capture_output=True, text=True, timeout=60, env={**os.environ, "XDG_DATA_HOME": str(tmp_path)},
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert "$ENGINE_API_KEY" in result.stderr and "--keys-file" in result.stderr
        assert "visible-in-ps" not in result.stderr + result.stdout


def test_serve_subprocess_passes_the_key_in_the_environment_not_argv(tmp_path):
    with serve_subprocess(tmp_path / "t.db", api_key=KEY_A):
        command_lines = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "engine serve" in command_lines and KEY_A not in command_lines


class _PathValues(dict):
    """Path parameters: the project's where the route names one, ``x`` for any other."""

    def __missing__(self, key: str) -> str:
        return "x"


def _routes(root_path: str = "") -> list[tuple[str, str]]:
    app = build_app(store=None, root_path=root_path)  # type: ignore[arg-type]  # the route table only
    return sorted({(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"})


@pytest.mark.parametrize("root", ["", "/engine"])
def test_with_keys_every_route_needs_one(run, tmp_path, keys_file, root):
    """With a root path, every route is there twice (docs/serve.md, "Behind a reverse
    proxy"): under it too, every one needs a key but the probes'."""
    values = _PathValues(entity="team-a", project="p", object_id="o", digest="d", name="app.js",
                         call_id="c", tail="calls")
    paths = [(m, p.format_map(values)) for m, p in _routes(root)] + [("GET", "/no/such/route")]

    async def scenario():
        async with serving(tmp_path / "t.db", keys=load_key_ring(keys_file, env_key=False),
                           root_path=root) as api:
            answers = []
            for method, path in paths:
                async with api.session.request(method, api.url + path, data=b"{}") as resp:
                    answers.append((method, path, resp.status, await resp.json()))
            wrong = await api.post("/calls/query_stats", {"project_id": "team-a/p"},
                                   {"Authorization": basic_auth("api", "nope")})
            not_basic = await api.post("/calls/query_stats", {}, {"Authorization": "Bearer x"})
            user = await api.post("/calls/query_stats", {}, {"Authorization": basic_auth("me", KEY_A)})
            return answers, [wrong, not_basic, user]

    answers, refused = run(scenario())
    assert len(answers) >= (56 if not root else 2 * 56)
    # the exemptions, listed: liveness and readiness probes carry no key
    assert sorted(a for a in answers if a[2] != 401) == sorted(
        ("GET", prefix + path, 200, answer) for prefix in {"", root}
        for path, answer in (("/health", {"status": "ok", "store": "sqlite"}),
                             ("/ready", {"status": "ready", "store": "sqlite"})))
    assert all(body["reason"].startswith("missing Authorization") for *_, status, body in answers
               if status == 401)  # fmt: skip
    assert [status for status, _ in refused] == [401, 401, 401]
    assert all(KEY_A not in body["reason"] and "nope" not in body["reason"] for _, body in refused)


@pytest.mark.parametrize("path, answer", [("/health", {"status": "ok", "store": "sqlite"}),
                                          ("/ready", {"status": "ready", "store": "sqlite"})])
def test_health_answers_a_probe_without_a_key_and_refuses_a_wrong_one(run, tmp_path, keys_file,
                                                                      path, answer):
    """The open routes: liveness and readiness for monitoring probes, which carry no key. A
    key that is sent is still checked."""

    async def scenario():
        async with serving(tmp_path / "t.db", keys=load_key_ring(keys_file, env_key=False)) as api:
            return [await api.get(path, headers) for headers in
                    ({}, {"Authorization": basic_auth("api", KEY_RO)},
                     {"Authorization": basic_auth("api", "nope")})]  # fmt: skip

    (bare, keyed, wrong) = run(scenario())
    assert bare == keyed == (200, answer)
    assert wrong[0] == 401 and "nope" not in wrong[1]["reason"]


def test_health_of_a_serve_process_with_a_key_answers_a_probe_without_one(tmp_path):
    with serve_subprocess(tmp_path / "t.db", api_key=KEY_A) as url:
        with urllib.request.urlopen(url + "/health", timeout=30) as resp:  # no Authorization
            assert (resp.status, json.loads(resp.read())) == (200, {"status": "ok", "store": "sqlite"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url + "/stats", timeout=30)
        refused.value.close()
    assert refused.value.code == 401


def test_a_key_reaches_only_the_projects_its_line_grants(run, tmp_path, keys_file):
    async def as_key(api, key, path, body):
        return await api.post(path, body, {"Authorization": basic_auth("api", key)})

    async def scenario():
        async with serving(tmp_path / "t.db", keys=load_key_ring(keys_file, env_key=False)) as api:
            a, b, ro = (lambda *r, k=k: as_key(api, k, *r) for k in (KEY_A, KEY_B, KEY_RO))
            call = complete("c1", project_id="team-a/dash")
            return {
                "a_writes_own": await a("/v2/team-a/dash/calls/complete", {"batch": [call]}),
                "a_writes_other": await a("/v2/team-b/p/calls/complete",
                                          {"batch": [complete("c2", project_id="team-b/p")]}),
                "a_reads_other": await a("/calls/query_stats", {"project_id": "team-b/p"}),
                "b_reads_a": await b("/call/read", {"project_id": "team-a/dash", "id": "c1"}),
                "b_streams_a": await b("/calls/stream_query", {"project_id": "team-a/dash"}),
                "b_refs_a": await b("/refs/read_batch", {"refs": ["weave:///team-a/dash/call/c1"]}),
                "b_objects_a": await b("/objs/query", {"project_id": "team-a/dash"}),
                "ro_reads": await ro("/call/read", {"project_id": "team-a/dash", "id": "c1"}),
                "ro_writes": await ro("/obj/create", {"obj": {"project_id": "team-a/dash",
                                                              "object_id": "o", "val": 1}}),
                "ro_reads_sibling": await ro("/calls/query_stats", {"project_id": "team-a/other"}),
                "ro_reads_ttl": await ro("/project/ttl_settings/read", {"project_id": "team-a/dash"}),
                "ro_sets_ttl": await ro("/project/ttl_settings/update",
                                        {"project_id": "team-a/dash", "retention_days": 1}),
                "b_sets_a_ttl": await b("/project/ttl_settings/update",
                                        {"project_id": "team-a/dash", "retention_days": 1}),
            }

    got = run(scenario())
    assert got["a_writes_own"] == (200, {})
    assert got["ro_reads"][0] == 200 and got["ro_reads"][1]["call"]["id"] == "c1"
    assert got["ro_reads_ttl"] == (200, {"retention_days": None})  # a retention is written
    for name, verb, project in [("a_writes_other", "write", "team-b/p"),
                                ("a_reads_other", "read", "team-b/p"),
                                ("b_reads_a", "read", "team-a/dash"),
                                ("b_streams_a", "read", "team-a/dash"),
                                ("b_refs_a", "read", "team-a/dash"),
                                ("b_objects_a", "read", "team-a/dash"),
                                ("ro_writes", "write", "team-a/dash"),
                                ("ro_reads_sibling", "read", "team-a/other"),
                                ("ro_sets_ttl", "write", "team-a/dash"),
                                ("b_sets_a_ttl", "write", "team-a/dash")]:  # fmt: skip
        status, body = got[name]
        assert status == 403, (name, status, body)
        assert f"may not {verb} project {project!r}" in body["reason"], (name, body)


def test_an_empty_batch_is_checked_against_the_path_s_project(run, tmp_path, keys_file):
    """An empty batch names no project to the store, which refused it under any key as one
    'across projects' (403): `engine doctor`'s probe of the ingest routes then passed on a 403."""
    async def scenario():
        async with serving(tmp_path / "t.db", keys=load_key_ring(keys_file, env_key=False)) as api:
            auth = {"Authorization": basic_auth("api", KEY_A)}
            empty = {"batch": []}
            return (await api.post("/v2/team-a/dash/calls/complete", empty, auth),
                    await api.post("/v2/team-b/p/calls/complete", empty, auth),
                    await api.post("/call/upsert_batch", empty, auth))

    own, other, upsert = run(scenario())
    assert own == (200, {}) and upsert == (200, {"res": []})
    assert other[0] == 403 and "may not write project 'team-b/p'" in other[1]["reason"]


def test_a_file_upload_a_key_may_not_write_is_refused_before_its_file_is_read(tmp_path, keys_file):
    """``project_id`` comes first in the multipart body (weave sends it first): a key that
    may not write it gets its 403 there, without the server waiting for the file's bytes
    (only its first 16 KiB are sent of the megabyte the body declares)."""
    parts = (b'--b\r\nContent-Disposition: form-data; name="project_id"\r\n\r\n%s\r\n'
             b'--b\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'
             + b"x" * 16384)

    async def upload(url: str, key: str, project: str) -> tuple[int, str]:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /file/create HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\nAuthorization: %s\r\n\r\n"
                     % basic_auth("api", key).encode())  # fmt: skip
        sent = parts % project.encode()
        writer.write(sent)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        body = await asyncio.wait_for(reader.readexactly(length), 30)
        writer.transport.abort()  # a reset: the server's lingering read of the rest ends
        return int(head.split(b" ")[1]), json.loads(body)["reason"]

    async def scenario():
        async with serving(tmp_path / "t.db", keys=load_key_ring(keys_file, env_key=False)) as api:
            return (await upload(api.url, KEY_B, "team-a/p"),
                    await upload(api.url, KEY_RO, "team-a/dash"))

    # uvloop only (engine serve's loop): on asyncio the server's stop waits out aiohttp's
    # 10 s lingering read of the body left unsent, even after the client's reset
    other, read_only = run_on("uvloop", scenario())
    assert other[0] == 403 and "may not write project 'team-a/p'" in other[1]
    assert read_only[0] == 403 and "may not write project 'team-a/dash'" in read_only[1]


def test_the_project_list_shows_each_key_only_the_projects_it_may_read(run, tmp_path, keys_file):
    """The trace browser's first page is the one listing across projects: cut to the grant."""

    async def scenario():
        async with serving(tmp_path / "t.db", keys=load_key_ring(keys_file, env_key=False)) as api:
            for key, project in ((KEY_A, "team-a/dash"), (KEY_A, "team-a/x"), (KEY_B, "team-b/p")):
                batch = {"batch": [complete(f"c-{project}", project_id=project)]}
                status, _ = await api.post(f"/v2/{project}/calls/complete", batch,
                                           {"Authorization": basic_auth("api", key)})
                assert status == 200
            # projects with objects and no calls (a dataset published alone) are listed too
            status, _ = await api.post("/obj/create", {"obj": {
                "project_id": "team-a/data", "object_id": "rows", "val": {"n": 1}}},
                {"Authorization": basic_auth("api", KEY_A)})
            assert status == 200
            status, info = await api.get("/server_info", {"Authorization": basic_auth("api", KEY_B)})
            assert status == 200 and len(info["store_id"]) == 32  # not a project's: any key
            return {name: await api.get("/ui/projects", {"Authorization": basic_auth("api", key)})
                    for name, key in (("a", KEY_A), ("ro", KEY_RO), ("b", KEY_B))}

    got = run(scenario())
    listed = {name: [(p["project_id"], p["calls"]) for p in body["projects"]]
              for name, (_, body) in got.items()}
    assert {name: status for name, (status, _) in got.items()} == {"a": 200, "ro": 200, "b": 200}
    assert listed == {"a": [("team-a/dash", 1), ("team-a/data", 0), ("team-a/x", 1)],
                      "ro": [("team-a/dash", 1)], "b": [("team-b/p", 1)]}


def test_a_keys_file_others_may_read_or_a_malformed_one_is_refused(tmp_path, keys_file):
    keys_file.chmod(0o644)
    with pytest.raises(ConfigError, match=f"chmod 600 {keys_file}"):
        read_keys_file(keys_file)
    keys_file.chmod(0o600)
    keys_file.write_text(f"{KEY_A} readwrite team-a/*\n")
    with pytest.raises(ConfigError, match=r"keys:1: expected '<key> rw\|ro <project,...>'"):
        read_keys_file(keys_file)
    result = subprocess.run(
        [sys.executable, "-m", "engine", "serve", "--port", "0", "--keys-file", str(keys_file)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "XDG_DATA_HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 2 and "keys_file:" in result.stderr and "Traceback" not in result.stderr
    assert KEY_A not in result.stderr


def test_without_keys_only_loopback_is_served_and_the_start_line_says_so(tmp_path, keys_file):
    async def non_loopback(**keys):
        runner, url = await start_server(host="0.0.0.0", port=0, db_path=tmp_path / "t.db", **keys)
        await runner.cleanup()
        return url

    with pytest.raises(ConfigError, match="will not listen on 0.0.0.0 without API keys"):
        asyncio.run(non_loopback())
    assert asyncio.run(non_loopback(keys=load_key_ring(keys_file))).startswith("http://0.0.0.0:")
    env = {k: v for k, v in os.environ.items() if k not in ("ENGINE_API_KEY", "ENGINE_KEYS_FILE")}
    proc = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--port", "0", "--db",
                             str(tmp_path / "u.db")], stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        first, second = proc.stdout.readline(), proc.stdout.readline()
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert "listening on http://127.0.0.1:" in first
    assert "no API keys, so listening on loopback only" in second
