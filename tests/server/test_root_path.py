"""``engine serve --root-path``: behind a reverse proxy at a path prefix (engine/server/
_root_path.py; docs/serve.md, "Behind a reverse proxy"). The value is checked; the page
carries it; every route answers with it and without it; through a proxy configured as the
docs say, the origin and loopback checks hold as they do without one. The trace browser
itself behind the proxy, in Chromium: tests/server/test_trace_browser.py."""

from __future__ import annotations

import re

import aiohttp
import pytest

from engine.common._errors import ConfigError
from engine.server._root_path import normalise
from tests.server.harness import complete, serving
from tests.server.reverse_proxy import ReverseProxy


@pytest.mark.parametrize("given, used", [("", ""), ("/", ""), ("/engine", "/engine"),
                                         ("/engine/", "/engine"), ("/a/b-c/d.e_f~g", "/a/b-c/d.e_f~g")])
def test_a_root_path_is_normalised(given, used):
    assert normalise(given) == used


@pytest.mark.parametrize("given, problem", [
    ("engine", "must start with '/'"),
    ("/engine?x=1", "a query ('?')"),
    ("/engine#top", "a fragment ('#')"),
    ("/a/../b", "'.' or '..'"),
    ("/a/.", "'.' or '..'"),
    ("/a//b", "empty part"),
    ("/a\x00b", r"'\x00'"),
    ("/a\nb", r"'\n'"),
    ("/my engine", "' '"),
    ("/%65ngine", "'%'"),
    ('/a"b<c>', "'\"<>'"),
    ("/tëst", "'ë'"),
])
def test_a_bad_root_path_is_refused_naming_why(given, problem):
    with pytest.raises(ValueError) as refused:
        normalise(given)
    assert problem in str(refused.value) and "e.g. /engine" in str(refused.value)


def test_a_bad_root_path_is_refused_before_the_store_opens(run, tmp_path):
    async def scenario():
        async with serving(tmp_path / "t.db", root_path="engine"):
            pass

    with pytest.raises(ConfigError, match="root_path: 'engine' must start with '/'"):
        run(scenario())
    assert not (tmp_path / "t.db").exists()


def _page_root(page: bytes) -> tuple[str, list[str]]:
    """The page's data-root-path and the URLs it loads."""
    text = page.decode()
    root = re.search(r'data-root-path="([^"]*)"', text).group(1)
    return root, re.findall(r'(?:href|src)="([^"]*)"', text)


def test_every_route_answers_with_the_root_path_and_without_it(run, db_path):
    async def scenario():
        async with serving(db_path, root_path="/engine/") as api:
            stored = await api.post("/engine/call/upsert_batch", {"batch": [
                {"mode": "start", "req": {"start": complete("via-prefix")}}]})
            pages = [await api.get(path) for path in
                     ("/", "/engine", "/engine/", "/engine/ent/proj/weave/calls", "/ent/proj/r/call/x")]
            asset = await api.get("/engine/ui/app.js")
            reads = [await api.post(prefix + "/calls/query_stats", {"project_id": "ent/proj"})
                     for prefix in ("", "/engine")]
            health = await api.get("/engine/health")
            missing = [(await api.get(path))[0] for path in
                       ("/engine/no/such/route", "/other/server_info", "/engineX/server_info")]
            return stored[0], pages, asset, reads, health, missing

    stored, pages, asset, reads, health, missing = run(scenario())
    assert stored == 200
    for status, page in pages:
        assert status == 200 and _page_root(page) == (
            "/engine", ["/engine/ui/app.css", "/engine/ui/favicon.svg", "/engine/", "/engine/ui/app.js"])
    assert asset[0] == 200 and b"document.documentElement.dataset.rootPath" in asset[1]
    assert [(status, body["count"]) for status, body in reads] == [(200, 1)] * 2
    assert health == (200, {"status": "ok", "store": "sqlite"})
    assert missing == [404, 404, 404]


def test_without_a_root_path_the_page_loads_from_the_hosts_root(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            return await api.get("/ent/proj/weave/calls"), (await api.get("/engine/server_info"))[0]

    (status, page), prefixed = run(scenario())
    assert status == 200 and _page_root(page) == (
        "", ["/ui/app.css", "/ui/favicon.svg", "/", "/ui/app.js"])
    assert prefixed == 404


@pytest.mark.parametrize("strip", [True, False], ids=["strips", "keeps-prefix"])
def test_through_a_proxy_the_origin_and_host_checks_hold(run, db_path, strip):
    """A keyless server behind the documented proxy: the trace browser's own POSTs (Origin:
    the proxy's) go through, another site's page is still refused, and a proxy that passed
    the browser's Host instead of a loopback one would be answered 421."""

    async def scenario():
        async with serving(db_path, root_path="/engine") as api:
            with ReverseProxy(api.url, "/engine", strip=strip) as proxy:
                base = proxy.url + "/engine"
                async with aiohttp.ClientSession() as session:
                    async def post(path, body, headers):
                        async with session.post(base + path, json=body, headers=headers) as resp:
                            return resp.status, await resp.json()

                    own = await post("/call/start", {"start": complete("own")}, {"Origin": proxy.url})
                    foreign = await post("/calls/delete", {"project_id": "ent/proj", "call_ids": ["own"]},
                                         {"Origin": "https://evil.example", "Content-Type": "text/plain"})
                    async with session.get(base + "/ent/proj/weave/calls") as resp:
                        page = resp.status, await resp.read()
                return own, foreign, page, proxy.paths, [c["id"] for c in await api.query()]

    own, foreign, (status, page), paths, stored = run(scenario())
    assert own[0] == 200 and stored == ["own"]
    assert foreign[0] == 403 and "Origin 'https://evil.example' is not this server's own" in foreign[1]["reason"]
    assert status == 200 and _page_root(page)[0] == "/engine"
    assert paths[0] == ("/engine/call/start", "/call/start" if strip else "/engine/call/start")


def test_a_proxy_passing_a_public_host_to_a_keyless_server_is_answered_421(run, db_path):
    """The Host guard is not weakened by a root path: docs/serve.md says which Host a
    proxy in front of a server without keys must send (the upstream's, nginx's default)."""

    async def scenario():
        async with serving(db_path, root_path="/engine") as api:
            return await api.post("/engine/calls/query_stats", {"project_id": "ent/proj"},
                                  {"Host": "tools.example"})

    status, body = run(scenario())
    assert status == 421 and body["reason"].startswith("Host 'tools.example' is not a loopback name")
