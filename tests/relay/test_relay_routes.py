"""``engine relay`` in front of ``engine serve``: ingest answers with the server's shapes,
everything else passes through (auth included), both expose ``/metrics``."""

import base64
import os
import urllib.error
import urllib.request

import msgspec
import pytest

from engine.common._machine import machine_token
from engine.server import serve_subprocess
from tests.faultserver import FaultServer
from tests.relay.harness import metrics, relay_subprocess, wait_until

pytestmark = pytest.mark.integration
KEY = "relay-test-key-0123456789"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"api:{KEY}".encode()).decode()}
PROJECT = "ent/relay"
T0 = "2025-01-01T00:00:00Z"


def _post(url: str, body, headers=None, jsonl: bool = False) -> tuple[int, object]:
    data = body if isinstance(body, bytes) else msgspec.json.encode(body)
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            raw = resp.read()
            return resp.status, (raw if jsonl else msgspec.json.decode(raw))
    except urllib.error.HTTPError as exc:
        return exc.code, msgspec.json.decode(exc.read())


def _start(call_id=None):
    start = {"project_id": PROJECT, "op_name": "op", "started_at": T0, "attributes": {}, "inputs": {}}
    return start if call_id is None else {**start, "id": call_id, "trace_id": call_id}


def _end(call_id):
    return {"project_id": PROJECT, "id": call_id, "ended_at": T0, "summary": {}}


def _stored(url: str) -> set[str]:
    status, body = _post(url + "/calls/stream_query", {"project_id": PROJECT}, AUTH, jsonl=True)
    assert status == 200, body
    return {msgspec.json.decode(line)["id"] for line in body.splitlines() if line.strip()}


@pytest.fixture(scope="module")
def relay(tmp_path_factory):
    db = tmp_path_factory.mktemp("relay") / "t.db"
    env = {**os.environ, "ENGINE_API_KEY": KEY}
    with serve_subprocess(db, api_key=KEY) as upstream, relay_subprocess(
        upstream, "--linger-ms", "5", env=env,
    ) as (relay_url, _):  # fmt: skip
        yield upstream, relay_url


def test_ingest_answers_with_the_servers_shapes_and_delivers(relay):
    upstream, url = relay
    status, started = _post(url + "/call/start", {"start": _start()})
    assert status == 200 and set(started) == {"id", "trace_id"}
    assert _post(url + "/call/end", {"end": _end(started["id"])}) == (200, {})
    a, b = "0190a0b0-0000-7000-8000-0000000000a1", "0190a0b0-0000-7000-8000-0000000000b2"
    status, batch = _post(url + "/call/upsert_batch", {"batch": [
        {"mode": "start", "req": {"start": _start(a)}}, {"mode": "end", "req": {"end": _end(a)}}]})
    assert status == 200 and batch == {"res": [{"id": a, "trace_id": a}, {}]}
    complete = {**_start(b), "id": b, "trace_id": b, "ended_at": T0, "summary": {}}
    assert _post(url + f"/v2/{PROJECT}/calls/complete", {"batch": [complete]}) == (200, {})
    assert wait_until(lambda: {started["id"], a, b} <= _stored(upstream), 30)


def test_bad_ingest_bodies_get_the_servers_errors(relay):
    _, url = relay
    assert _post(url + "/call/start", b"{not json")[0] == 400
    assert _post(url + "/call/start", {"start": {"project_id": PROJECT}})[0] == 422
    status, body = _post(url + "/v2/other/proj/calls/complete", {"batch": [
        {**_start("0190a0b0-0000-7000-8000-0000000000c3"), "trace_id": "t", "ended_at": T0,
         "summary": {}}]})
    assert status == 422 and "differs from the path" in body["reason"]


def test_other_routes_pass_through_with_the_clients_auth(relay):
    upstream, url = relay
    request = urllib.request.Request(url + "/server_info", headers=AUTH)
    with urllib.request.urlopen(request, timeout=30) as resp:
        info = msgspec.json.decode(resp.read())
    assert "trace_server_version" in info  # the upstream's
    # what concerns the relay itself is the relay's: a client compresses by it
    assert info["accepts_encodings"] == ["zstd", "gzip"] and info["machine"] == machine_token()
    request = urllib.request.Request(url + "/server_info")  # no key: the upstream's 401
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    refused.value.close()
    assert refused.value.code == 401
    status, body = _post(url + "/calls/query_stats", {"project_id": PROJECT})
    assert status == 401 and "Authorization" in body["reason"]  # the upstream's own answer
    status, body = _post(url + "/calls/query_stats", {"project_id": PROJECT}, AUTH)
    assert status == 200 and "count" in body


def test_the_relay_takes_upsert_batches_its_upstream_refuses_and_says_so():
    """An upstream like weave's for a calls_complete project: it does not say it takes
    upsert batches and refuses them. The relay says it does (a client then sends its open
    calls' starts in upsert batches, not one v2 request each): it takes them into its ring,
    and its sender pairs each start with its end into calls/complete for the upstream."""
    a = "0190a0b0-0000-7000-8000-0000000000d4"
    with FaultServer(weave_residence=True) as upstream:
        upstream.residence[PROJECT] = "complete"
        with relay_subprocess(upstream.url, "--linger-ms", "5") as (url, _):
            with urllib.request.urlopen(url + "/server_info", timeout=30) as resp:
                info = msgspec.json.decode(resp.read())
            assert info["accepts_upsert_batch"] is True
            assert info["trace_server_version"] == "faultserver"  # the upstream's, otherwise
            status, batch = _post(url + "/call/upsert_batch", {"batch": [
                {"mode": "start", "req": {"start": _start(a)}},
                {"mode": "end", "req": {"end": _end(a)}}]})
            assert status == 200 and batch == {"res": [{"id": a, "trace_id": a}, {}]}
            assert upstream.wait_for(lambda: upstream.is_complete(PROJECT, a), 30)
        assert not upstream.records("/call/upsert_batch")
        assert upstream.records("/calls/complete")


def test_relay_and_serve_expose_prometheus_metrics(relay):
    upstream, url = relay
    _post(url + "/call/start", {"start": _start()})
    relay_metrics = metrics(url)
    assert relay_metrics["engine_relay_items_start_total"] >= 1
    assert "engine_retries_total" in relay_metrics and "engine_in_flight_requests" in relay_metrics
    request = urllib.request.Request(upstream + "/metrics", headers=AUTH)
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert b"engine_server_calls_started_total" in resp.read()


TEXT = {"Content-Type": "text/plain"}  # what a page may POST cross-site without a preflight


def test_other_sites_pages_and_rebound_names_are_refused_as_engine_serve_refuses_them(relay):
    """Keyless on loopback as engine serve is, the relay checks ``Origin`` and ``Host`` the same
    way (docs/serve.md, "Keys") before it ingests or proxies anything."""
    _, url = relay
    query = {"project_id": PROJECT}
    cross_site = [
        _post(url + "/call/start", {"start": _start()}, {**TEXT, "Origin": "https://evil.example"}),
        _post(url + "/calls/delete", {**query, "call_ids": ["x"]},  # never reaches the upstream
              {**TEXT, **AUTH, "Origin": "http://127.0.0.1:1"}),
    ]
    rebound = [_post(url + path, body, {**AUTH, "Host": "rebind.attacker.example:6345"})
               for path, body in (("/call/start", {"start": _start()}), ("/calls/query_stats", query))]
    assert [status for status, _ in cross_site] == [403, 403]
    assert all(body["reason"].startswith("cross-origin request refused: Origin ")
               and "engine relay answers no other website's page" in body["reason"]
               for _, body in cross_site)
    assert [status for status, _ in rebound] == [421, 421]
    assert all(body["reason"].startswith("Host 'rebind.attacker.example:6345' is not a loopback "
                                         "name: engine relay without API keys") for _, body in rebound)


def test_the_trace_browser_works_through_the_relay_with_the_relays_own_origin(relay):
    """The page and its assets are the upstream's, proxied; the browser's same-origin POSTs
    carry the relay's origin, which the relay checks and does not pass on (the upstream would
    find it is not its own)."""
    _, url = relay
    port = url.rsplit(":", 1)[1]
    with urllib.request.urlopen(urllib.request.Request(url + "/", headers=AUTH), timeout=30) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/html")
    own = [_post(url + "/calls/query_stats", {"project_id": PROJECT}, {**AUTH, "Origin": url}),
           _post(url + "/calls/query_stats", {"project_id": PROJECT},
                 {**AUTH, "Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"}),
           _post(url + "/call/start", {"start": _start()}, {**TEXT, "Origin": url})]
    assert [status for status, _ in own] == [200, 200, 200], own


def test_a_project_no_client_could_mean_is_refused_whole_before_any_item_is_taken(relay):
    """As the upstream would refuse it (tests/server/test_project_names.py), but at once: the
    client learns it, not the relay's dead letters."""
    _, url = relay
    before = metrics(url)["engine_relay_items_start_total"]
    status, body = _post(url + "/call/upsert_batch", {"batch": [
        {"mode": "start", "req": {"start": _start()}},
        {"mode": "start", "req": {"start": {**_start(), "project_id": "e/.."}}}]})
    assert status == 422 and "project 'e/..' has the project '..'" in body["reason"]
    assert metrics(url)["engine_relay_items_start_total"] == before
