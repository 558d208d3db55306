"""Error translation, retries (idempotent reads and ingest only), auth, and key hygiene."""

from __future__ import annotations

import base64
import socket

import pytest
from aiohttp import web

from engine import HTTPError, SendError
from engine.client import RemoteHTTPTraceServer
from tests.client.stub import StubServer

SECRET = "sekrit-api-key-123"


def _answer(status: int, body: dict, headers: dict | None = None):
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(body, status=status, headers=headers)

    return handler


def _failing_then(ok_after: int, status: int = 503):
    seen = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.path)
        if len(seen) <= ok_after:
            return web.json_response({"reason": "busy"}, status=status,
                                     headers={"Retry-After-ms": "1"})
        return web.json_response({"count": 7})

    return handler


@pytest.mark.parametrize("key", ["reason", "detail"])
def test_http_error_carries_status_and_the_servers_reason(key):
    with StubServer(_answer(422, {key: "project_id: bad"})) as stub, \
            RemoteHTTPTraceServer(stub.url) as client, pytest.raises(HTTPError) as err:
        client.calls_query_stats({"project_id": "a/b"})
    assert err.value.status == 422 and err.value.reason == "project_id: bad"
    assert not err.value.retriable


def test_idempotent_read_is_retried_until_it_succeeds():
    with StubServer(_failing_then(2)) as stub, RemoteHTTPTraceServer(stub.url) as client:
        assert client.calls_query_stats({"project_id": "a/b"}).count == 7
        assert len(stub.requests) == 3


def test_501_is_not_retried():
    # a server that does not implement the route never will: weave's client retries every
    # 5xx, but a 501 or 505 only burns the retry budget
    with StubServer(_failing_then(2, status=501)) as stub, RemoteHTTPTraceServer(stub.url) as client:
        with pytest.raises(HTTPError) as err:
            client.calls_query_stats({"project_id": "a/b"})
        assert err.value.status == 501 and len(stub.requests) == 1


def test_non_idempotent_request_is_sent_once():
    with StubServer(_failing_then(2)) as stub, RemoteHTTPTraceServer(stub.url) as client:
        with pytest.raises(HTTPError) as err:
            client.calls_delete({"project_id": "a/b", "call_ids": ["c"]})
        assert err.value.status == 503 and err.value.retriable
        assert len(stub.requests) == 1


def test_retries_stop_at_the_deadline():
    with StubServer(_failing_then(10**9)) as stub, \
            RemoteHTTPTraceServer(stub.url, retry_budget_s=0.3) as client, \
            pytest.raises(HTTPError) as err:
        client.calls_query_stats({"project_id": "a/b"})
    assert err.value.status == 503 and 1 <= len(stub.requests) < 100


def test_connection_refused_is_a_retriable_send_error():
    with socket.socket() as s:  # a port nobody listens on (bound, never listening)
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        with RemoteHTTPTraceServer(url, retry_budget_s=0.2) as client, \
                pytest.raises(SendError) as err:
            client.calls_query_stats({"project_id": "a/b"})
    assert err.value.retriable and not isinstance(err.value, HTTPError)


def test_set_auth_sends_basic_with_user_api_and_never_shows_the_key():
    with StubServer(_answer(401, {"reason": "bad key"})) as stub, \
            RemoteHTTPTraceServer(stub.url) as client:
        client.set_auth(("someone", SECRET))
        with pytest.raises(HTTPError) as err:
            client.calls_query_stats({"project_id": "a/b"})
        sent = stub.requests[0].headers["Authorization"]
        shown = f"{err.value!s} {err.value!r} {client!r}"
    assert sent == "Basic " + base64.b64encode(f"api:{SECRET}".encode()).decode()
    assert SECRET not in shown and base64.b64encode(f"api:{SECRET}".encode()).decode() not in shown


def test_dict_that_does_not_fit_the_request_type_is_rejected_before_sending():
    with StubServer(_answer(200, {})) as stub, RemoteHTTPTraceServer(stub.url) as client:
        with pytest.raises(ValueError, match="project"):
            client.calls_query_stats({"project": "a/b"})
        assert stub.requests == []
