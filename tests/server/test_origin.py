"""Where requests come from (engine/server/_origin.py; docs/serve.md, "Keys"): a page of
another website can neither write nor delete through a developer's browser, a DNS-rebinding
page cannot read a server without keys, and our own clients (no ``Origin``, a loopback
``Host``) and the trace browser's same-origin requests go through."""

from __future__ import annotations

import pytest

from engine.server._body import ApiError
from engine.server._origin import check_origin
from tests.server.harness import basic_auth, complete, serving

TEXT = {"Content-Type": "text/plain"}  # what a page may POST cross-site without a preflight
REBOUND = {"Host": "rebind.attacker.example:6345"}


def test_a_page_of_another_site_can_neither_write_nor_delete(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            await api.post("/call/upsert_batch", {"batch": [
                {"mode": "start", "req": {"start": complete("kept")}}]})
            port = api.url.rsplit(":", 1)[1]
            refused = [
                await api.post("/call/start", {"start": complete("x")},
                               {**TEXT, "Origin": "https://evil.example"}),
                await api.post("/calls/delete", {"project_id": "ent/proj", "call_ids": ["kept"]},
                               {**TEXT, "Origin": "http://127.0.0.1:1"}),  # another local page
                await api.post("/calls/delete", {"project_id": "ent/proj", "call_ids": ["kept"]},
                               {**TEXT, "Origin": f"http://localhost:{port}"}),  # other name
                await api.get("/health", {"Origin": "null"}),  # a sandboxed frame, a file://
            ]
            own = await api.post("/call/start", {"start": complete("own")},
                                 {**TEXT, "Origin": api.url})  # the trace browser's own page
            plain = await api.post("/call/start", {"start": complete("plain")}, TEXT)
            return refused, own[0], plain[0], sorted(c["id"] for c in await api.query())

    refused, own, plain, stored = run(scenario())
    assert [status for status, _ in refused] == [403] * 4
    assert all(body["reason"].startswith("cross-origin request refused: Origin ")
               and "answers no other website's page" in body["reason"] for _, body in refused)
    assert (own, plain, stored) == (200, 200, ["kept", "own", "plain"])


def test_without_keys_only_loopback_names_are_answered(run, db_path):
    """DNS rebinding: the attacker's name resolves to 127.0.0.1, and the browser sends it."""

    async def scenario():
        async with serving(db_path) as api:
            await api.post("/call/start", {"start": complete("a")})
            query = {"project_id": "ent/proj"}
            return (await api.post("/calls/stream_query", query, REBOUND),
                    [(await api.post("/calls/stream_query", query, {"Host": host}))[0]
                     for host in ("localhost:1", "LOCALHOST", "[::1]:80", "::1", "127.0.0.1")])

    (status, body), loopback = run(scenario())
    assert status == 421 and body["reason"].startswith(
        "Host 'rebind.attacker.example:6345' is not a loopback name: engine serve without API keys")
    assert loopback == [200] * 5


def test_with_keys_any_name_is_answered_and_other_sites_still_refused(run, db_path):
    """With keys a rebinding page has no key; operators reach the server by their own names."""

    async def scenario():
        async with serving(db_path, api_key="k" * 20, auth=("api", "k" * 20)) as api:
            named = await api.post("/call/start", {"start": complete("a")}, REBOUND)
            keyless = await api.post("/calls/query_stats", {"project_id": "ent/proj"},
                                     {**REBOUND, "Authorization": basic_auth("api", "nope")})
            foreign = await api.post("/call/start", {"start": complete("b")},
                                     {"Origin": "https://evil.example"})
            return named[0], keyless[0], foreign[0], len(await api.query())

    assert run(scenario()) == (200, 401, 403, 1)


@pytest.mark.parametrize("origin, host", [
    ("http://127.0.0.1:6345", "127.0.0.1:6345"),
    ("https://traces.example.com", "traces.example.com"),  # each at https' port, 443
    ("https://traces.example.com", "Traces.Example.com:443"),
    ("http://[::1]:6345", "[::1]:6345"),
])  # fmt: skip
def test_the_servers_own_origin_is_the_one_its_host_names(origin, host):
    check_origin("engine serve", origin, host)


@pytest.mark.parametrize("origin, host", [
    ("http://traces.example.com", "traces.example.com:443"),
    ("http://localhost:8000", "localhost:6345"),
    ("http://127.0.0.1:6345", None),
    ("null", "127.0.0.1:6345"),
    ("file://", "127.0.0.1:6345"),
    ("http://127.0.0.1:6345/path", "127.0.0.1:6345"),
])  # fmt: skip
def test_any_other_origin_is_refused(origin, host):
    with pytest.raises(ApiError) as refused:
        check_origin("engine serve", origin, host)
    assert refused.value.status == 403
