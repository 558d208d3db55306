"""Fuzz every route of ``engine serve`` (a real child process on loopback): no input gets a 5xx.

For each route the server registers, hypothesis sends bodies shaped like the route's
request Struct (from ``engine.wire.routes``) with hostile values mixed in at every level
(``tests/server/fuzz_bodies.py``), plus bodies that are not JSON at all. Every answer must
be below 500; an error answer is JSON with a reason; a 200 JSONL stream is whole. After
each route's run the server must still answer, and every project the fuzzer wrote to must
still read back in full (a stored row that breaks later reads is a failure too).

``ENGINE_FUZZ_EXAMPLES`` sets the examples per route (default 25: the whole file runs in
well under a minute); e.g. ``ENGINE_FUZZ_EXAMPLES=2000 scripts/test tests/server/test_fuzz_routes.py``
for a long run.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.parse

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.server import serve_subprocess
from engine.server._app import NO_BODY_ROUTES, build_app
from engine.server._app import REQUEST_TYPES as SERVER_REQUEST_TYPES
from engine.server._routes_unsupported import UNSUPPORTED
from engine.wire.routes import EXTRA_ROUTES, ROUTES
from tests.server.fuzz_bodies import PROJECTS, bodies

EXAMPLES_PER_ROUTE = int(os.environ.get("ENGINE_FUZZ_EXAMPLES", "25"))
_PATH_VALUES = {"entity": "fz", "project": "p1", "object_id": "op", "digest": "latest",
                "name": "app.js", "call_id": "c1", "tail": "calls",  # trace browser
                "queue_id": "q1", "item_id": "i1", "runtime_name": "r1", "prediction_id": "p1",
                "score_id": "s1", "evaluation_run_id": "e1"}
# routes whose body is not one JSON request Struct
_SPECIAL_BODIES = {"/file/create", "/files/create", "/otel/v1/traces", "/graphql"}


def _server_routes() -> list[tuple[str, str]]:
    app = build_app(store=None)  # type: ignore[arg-type]  # only the route table is read
    found = {(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}
    return sorted(found)


def _request_type(method: str, path: str):
    for route in (*ROUTES.values(), *EXTRA_ROUTES.values()):
        if route.method == method and path in (route.path, *route.legacy_paths):
            return route.req if route.body == "json" else None
    return SERVER_REQUEST_TYPES.get((method, path))  # server routes the client never calls


ROUTES_UNDER_TEST = _server_routes()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serve_subprocess(tmp_path_factory.mktemp("fuzz") / "traces.db") as url:
        yield urllib.parse.urlsplit(url).netloc


def _send(netloc: str, method: str, path: str, body: bytes | None,
          headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:  # fmt: skip
    conn = http.client.HTTPConnection(netloc, timeout=60)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json",
                                                       **(headers or {})})  # fmt: skip
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


def _check_answer(status: int, content_type: str, payload: bytes, what: str) -> None:
    assert status < 500, f"{what} -> {status}: {payload[:500]!r}"
    if status >= 400:
        assert content_type.startswith("application/json"), what
        assert msgspec.json.decode(payload)["reason"], what
    elif content_type.startswith("application/jsonl"):
        for line in payload.splitlines():  # a cut stream leaves a broken last line
            msgspec.json.decode(line)


def _path(template: str) -> str:
    return template.format(**_PATH_VALUES)


def _every_project_reads_back(netloc: str) -> None:
    for project_id in PROJECTS:
        body = json.dumps({"project_id": project_id}).encode()
        for path in ("/calls/stream_query", "/threads/stream_query", "/objs/query",
                     "/feedback/query", "/cost/query"):  # fmt: skip
            status, content_type, payload = _send(netloc, "POST", path, body)
            assert status == 200, f"reading {project_id} back through {path}: {status} {payload[:300]!r}"
            _check_answer(status, content_type, payload, path)


def _special_body(path: str) -> st.SearchStrategy[tuple[bytes, dict[str, str]]]:
    if path == "/otel/v1/traces":
        span = st.fixed_dictionaries({}, optional={
            "traceId": st.text(max_size=8), "spanId": st.text(max_size=8),
            "startTimeUnixNano": st.one_of(st.integers(), st.text(max_size=5)),
            "endTimeUnixNano": st.one_of(st.integers(), st.text(max_size=5)),
            "attributes": st.lists(st.fixed_dictionaries({"key": st.text(max_size=4)}), max_size=2),
            "name": st.text(max_size=5),
        })  # fmt: skip
        shapes = st.one_of(
            span.map(lambda s: {"resourceSpans": [{"scopeSpans": [{"spans": [s]}]}]}),
            st.sampled_from([{"resourceSpans": [1]}, {"resourceSpans": [{"scopeSpans": 3}]},
                             [], {"resourceSpans": [{"scopeSpans": [{"spans": [7]}]}]}]),
        )  # fmt: skip
        headers = st.sampled_from([{"project_id": "fz/p1"}, {"project_id": "bad"}, {}])
        return st.tuples(shapes.map(lambda d: json.dumps(d).encode()), headers)
    return st.tuples(bodies(None), st.just({}))


@pytest.mark.integration
@pytest.mark.parametrize(("method", "template"), ROUTES_UNDER_TEST)
def test_no_input_gets_a_5xx_and_everything_stored_reads_back(server, method, template):
    path = _path(template)
    if template in _SPECIAL_BODIES:
        cases = _special_body(template)
    elif method == "POST":
        cases = st.tuples(bodies(_request_type(method, template)), st.just({}))
    else:
        query = st.sampled_from(["", "?limit=-1", "?limit=99999999999999999999", "?offset=x",
                                 "?digests=a&digests=b", "?limit=5"])  # fmt: skip
        cases = st.tuples(query.map(lambda q: q.encode()), st.just({}))

    @settings(max_examples=EXAMPLES_PER_ROUTE, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(case=cases)
    def one_request(case: tuple[bytes, dict[str, str]]) -> None:
        body, headers = case
        if method == "POST":
            status, content_type, payload = _send(server, method, path, body, headers)
        else:
            status, content_type, payload = _send(server, method, path + body.decode(), None)
        _check_answer(status, content_type, payload, f"{method} {path} {body[:300]!r}")

    one_request()
    assert _send(server, "GET", "/health", None)[0] == 200
    _every_project_reads_back(server)


def test_every_route_the_server_registers_is_fuzzed():
    """A route added later is fuzzed too, with its wire Struct when one is registered."""
    typed = [r for r in ROUTES_UNDER_TEST if r[0] == "POST" and _request_type(*r) is not None]
    untyped = {r[1] for r in ROUTES_UNDER_TEST if r[0] == "POST"} - {r[1] for r in typed}
    assert len(ROUTES_UNDER_TEST) >= 55
    refused = {path for verb, path, _, _ in UNSUPPORTED if verb == "POST"}  # no body read
    bodyless = {path for verb, path in NO_BODY_ROUTES if verb == "POST"}
    assert untyped <= _SPECIAL_BODIES | {"/feedback/batch/create"} | refused | bodyless, untyped
