import concurrent.futures
import functools
import gzip
import http.client
import socket

import aiohttp
import msgspec
import pytest
import zstandard

from tests.faultserver import LOOP_NAMES, FaultServer, run_on

PROJECT = "ent/proj"


def start(call_id: str) -> dict:
    return {
        "project_id": PROJECT,
        "id": call_id,
        "trace_id": "t",
        "started_at": "2026-01-01T00:00:00Z",
    }


def end(call_id: str) -> dict:
    return {"project_id": PROJECT, "id": call_id, "ended_at": "2026-01-01T00:00:01Z", "summary": {}}


def upsert(*items: tuple[str, dict]) -> bytes:
    return msgspec.json.encode({"batch": [{"mode": m, "req": {m: call}} for m, call in items]})


def post(server: FaultServer, path: str, body: bytes, headers: dict | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request(
            "POST", path, body, {"Content-Type": "application/json", **(headers or {})}
        )
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


@pytest.fixture
def server():
    with FaultServer(seed=3) as fault_server:
        yield fault_server


def test_upsert_start_and_end_are_merged_by_project_and_id(server):
    status, _, reply = post(server, "/call/upsert_batch", upsert(("start", start("a"))))
    assert status == 200 and msgspec.json.decode(reply) == {"res": [{"id": "a", "trace_id": "t"}]}
    assert not server.is_complete(PROJECT, "a")
    post(server, "/call/upsert_batch", upsert(("end", end("a")), ("start", start("b"))))
    assert server.is_complete(PROJECT, "a") and server.stored_ids(PROJECT) == {"a", "b"}
    assert server.duplicate_deliveries() == 0


def test_repeated_delivery_is_idempotent_but_counted(server):
    body = upsert(("start", start("a")), ("end", end("a")))
    post(server, "/call/upsert_batch", body)
    post(server, "/call/upsert_batch", body)
    assert server.stored_ids() == {"a"}
    assert server.duplicate_deliveries() == 2


def test_v2_and_unbatched_routes_store_calls(server):
    complete = {**start("c"), **end("c")}
    complete.pop("project_id")
    post(server, "/v2/ent/proj/calls/complete", msgspec.json.encode({"batch": [complete]}))
    post(server, "/v2/ent/proj/call/start", msgspec.json.encode({"start": start("d")}))
    post(server, "/v2/ent/proj/call/end", msgspec.json.encode({"end": end("d")}))
    post(server, "/call/start", msgspec.json.encode({"start": start("e")}))
    post(server, "/call/end", msgspec.json.encode({"end": end("e")}))
    assert server.stored_ids(PROJECT) == {"c", "d", "e"}
    assert all(server.is_complete(PROJECT, cid) for cid in "cde")


@pytest.mark.parametrize("encoding", ["zstd", "gzip"])
def test_compressed_bodies_are_decoded(server, encoding):
    raw = upsert(*(("start", start(f"z{i}")) for i in range(50)))
    wire = zstandard.ZstdCompressor().compress(raw) if encoding == "zstd" else gzip.compress(raw)
    status, _, _ = post(server, "/call/upsert_batch", wire, {"Content-Encoding": encoding})
    assert status == 200 and len(server.stored_ids()) == 50
    assert server.records()[-1].wire_bytes == len(wire)


def test_undecodable_body_is_a_400(server):
    status, _, reply = post(server, "/call/upsert_batch", b'{"batch": 3}')
    assert status == 400 and b"batch" in reply


def test_limit_bytes_answers_413_above_the_limit_only(server):
    small, large = (
        upsert(("start", start("s"))),
        upsert(*(("start", start(f"l{i}")) for i in range(20))),
    )
    server.limit_bytes = len(small)
    assert post(server, "/call/upsert_batch", small)[0] == 200
    status, _, reply = post(server, "/call/upsert_batch", large)
    assert status == 413 and str(len(large)).encode() in reply
    assert server.stored_ids() == {"s"}


def test_429_carries_retry_after(server):
    server.p_429, server.retry_after = 1.0, "2"
    status, headers, _ = post(server, "/call/upsert_batch", upsert(("start", start("a"))))
    assert status == 429 and headers["Retry-After"] == "2"
    assert server.stored_ids() == set()


def fault_sequence(seed: int) -> list[int]:
    with FaultServer(seed, p_429=0.2, p_500=0.2, p_503=0.2) as server:
        return [
            post(server, "/call/upsert_batch", upsert(("start", start(str(i)))))[0]
            for i in range(40)
        ]


def test_random_faults_are_reproducible_from_the_seed():
    first = fault_sequence(9)
    assert first == fault_sequence(9)
    assert {200, 429, 500, 503} <= set(first)


def test_reset_closes_the_connection_without_an_answer(server):
    server.p_reset = 1.0
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        post(server, "/call/upsert_batch", upsert(("start", start("a"))))
    assert server.stored_ids() == set()
    assert [(r.status, r.outcome) for r in server.records()] == [(0, "reset")]


def test_lost_ack_stores_then_resets_so_a_resend_counts_as_duplicate(server):
    server.p_lost_ack = 1.0
    body = upsert(("start", start("a")))
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        post(server, "/call/upsert_batch", body)
    assert server.stored_ids() == {"a"}
    server.p_lost_ack = 0.0
    assert post(server, "/call/upsert_batch", body)[0] == 200
    assert server.duplicate_deliveries() == 1
    assert [r.outcome for r in server.records()] == ["lost_ack", "stored"]


def test_down_refuses_connections_and_up_reopens_the_same_port(server):
    port = server.port
    server.down()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    server.up()
    assert server.port == port
    assert post(server, "/call/upsert_batch", upsert(("start", start("a"))))[0] == 200


def test_reject_ids_answers_422_naming_the_id_and_stores_nothing_of_that_batch(server):
    server.reject_ids = frozenset({"bad"})
    status, _, reply = post(
        server, "/call/upsert_batch", upsert(("start", start("ok")), ("start", start("bad")))
    )
    assert status == 422 and b"bad" in reply
    assert server.stored_ids() == set()


def test_complete_mode_required_answers_400_with_the_error_code_to_upsert_only(server):
    server.complete_mode_required = True
    status, _, reply = post(server, "/call/upsert_batch", upsert(("start", start("a"))))
    assert status == 400
    assert msgspec.json.decode(reply)["error_code"] == "CALLS_COMPLETE_MODE_REQUIRED"
    complete = {**start("a"), **end("a")}
    assert (
        post(server, "/v2/ent/proj/calls/complete", msgspec.json.encode({"batch": [complete]}))[0]
        == 200
    )


def test_stall_delays_the_answer_past_a_client_timeout(server):
    server.stall_s = 30.0
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=0.2)
    try:
        connection.request("POST", "/call/upsert_batch", upsert(("start", start("a"))))
        with pytest.raises(TimeoutError):
            connection.getresponse()
    finally:
        connection.close()


def test_release_answers_the_held_requests_at_once_stored_before_or_after_the_hold(server):
    """A frozen server thawing: release() answers what it holds now, not at stall_s; held
    before storing, a request is stored only then; with stall_after_store, at once."""
    server.stall_s = 30.0
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, server, "/call/upsert_batch", upsert(("start", start("a"))))
        assert server.wait_for(lambda: server.stalled == 1, timeout_s=5)
        assert server.stored_ids() == set()  # held before it is stored
        server.stall_after_store = True
        second = pool.submit(post, server, "/call/upsert_batch", upsert(("start", start("b"))))
        assert server.wait_for(lambda: server.stalled == 2, timeout_s=5)
        assert server.stored_ids() == {"b"}  # stored, its answer held
        server.stall_s = 0.0
        server.release()
        assert first.result(timeout=5)[0] == second.result(timeout=5)[0] == 200
    assert server.stored_ids() == {"a", "b"} and server.stalled == 0


def test_wait_for_reports_timeout_and_success(server):
    assert server.wait_for(lambda: False, timeout_s=0.05) is False
    post(server, "/call/upsert_batch", upsert(("start", start("a"))))
    assert server.wait_stored(1, timeout_s=5)


@pytest.fixture(params=LOOP_NAMES)
def run(request):
    return functools.partial(run_on, request.param)


def test_async_context_manager_serves_on_both_loops(run):
    async def scenario():
        async with (
            FaultServer(seed=1, accepts_encodings=("zstd",)) as server,
            aiohttp.ClientSession() as session,
            session.get(server.url + "/server_info") as response,
        ):
            return response.status, await response.json()

    status, info = run(scenario())
    assert status == 200 and info["accepts_encodings"] == ["zstd"]
