import base64
import functools
from concurrent.futures import ThreadPoolExecutor

import msgspec
import pytest
import zstandard

from engine.common._errors import HTTPError, SendError
from engine.sender._transport import Compressor, Transport
from tests.faultserver import LOOP_NAMES, FaultServer, run_on

API_KEY = "k3y-that-must-never-leak"
UPSERT = "/call/upsert_batch"


@pytest.fixture(params=LOOP_NAMES)
def run(request):
    return functools.partial(run_on, request.param)


@pytest.fixture
def server():
    with FaultServer(seed=5) as fault_server:
        yield fault_server


def upsert_body(*call_ids: str, project: str = "ent/proj") -> bytes:
    batch = [
        {"mode": "start", "req": {"start": {"project_id": project, "id": cid, "trace_id": cid}}}
        for cid in call_ids
    ]
    return msgspec.json.encode({"batch": batch})


def test_post_sends_wire_headers_and_returns_the_answer(run, server):
    async def scenario():
        async with Transport(server.url, api_key=API_KEY, user_agent="engine-test/1") as transport:
            return await transport.post(UPSERT, upsert_body("c1"), retry_id="retry-1")

    response = run(scenario())
    assert response.status == 200
    assert msgspec.json.decode(response.body) == {"res": [{"id": "c1", "trace_id": "c1"}]}
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.rtt_s > 0
    (record,) = server.records(UPSERT)
    expected_auth = "Basic " + base64.b64encode(f"api:{API_KEY}".encode()).decode()
    assert record.headers["Authorization"] == expected_auth
    assert record.headers["Content-Type"] == "application/json"
    assert record.headers["User-Agent"] == "engine-test/1"
    assert record.headers["X-Weave-Retry-Id"] == "retry-1"
    assert "Content-Encoding" not in record.headers


def test_post_without_key_or_retry_id_sends_neither(run, server):
    async def scenario():
        async with Transport(server.url) as transport:
            await transport.post(UPSERT, upsert_body("c1"))

    run(scenario())
    (record,) = server.records(UPSERT)
    assert "Authorization" not in record.headers
    assert "X-Weave-Retry-Id" not in record.headers


def test_extra_and_per_request_headers_are_sent(run, server):
    async def scenario():
        extra = {"X-Weave-Client-Capabilities": "trace_id_on_end,eval_child_meta"}
        async with Transport(server.url, extra_headers=extra) as transport:
            await transport.post(UPSERT, upsert_body("c1"), headers={"X-Weave-Trace-Id": "t1"})

    run(scenario())
    (record,) = server.records(UPSERT)
    assert record.headers["X-Weave-Client-Capabilities"] == "trace_id_on_end,eval_child_meta"
    assert record.headers["X-Weave-Trace-Id"] == "t1"


def test_zstd_body_is_decoded_and_stored_by_the_server(run, server):
    body = upsert_body(*(f"call-{i}" for i in range(200)))

    async def scenario():
        compressed = await Compressor(level=3).compress_async(body, None)
        async with Transport(server.url) as transport:
            return await transport.post(UPSERT, compressed, content_encoding="zstd"), compressed

    response, compressed = run(scenario())
    assert response.status == 200
    assert len(compressed) < len(body)
    assert server.stored_ids("ent/proj") == {f"call-{i}" for i in range(200)}
    (record,) = server.records(UPSERT)
    assert record.headers["Content-Encoding"] == "zstd"
    assert record.wire_bytes == len(compressed)


def test_a_large_body_written_after_the_headers_arrives_whole(run, server):
    ids = [f"call-{i:05d}-{'x' * 100}" for i in range(1500)]
    body = upsert_body(*ids)
    assert len(body) > 128 << 10  # past the size from which the headers go out first

    async def scenario():
        async with Transport(server.url) as transport:
            return await transport.post(UPSERT, body, retry_id="r-large")

    assert run(scenario()).status == 200
    assert server.stored_ids("ent/proj") == set(ids)
    (record,) = server.records(UPSERT)
    assert record.headers["Content-Type"] == "application/json"
    assert record.headers["X-Weave-Retry-Id"] == "r-large"
    assert record.wire_bytes == len(body)


def test_error_statuses_are_returned_not_raised(run, server):
    server.p_429, server.retry_after = 1.0, "7"

    async def scenario():
        async with Transport(server.url) as transport:
            return await transport.post(UPSERT, upsert_body("c1"))

    response = run(scenario())
    assert response.status == 429
    assert response.headers["Retry-After"] == "7"


def test_base_url_path_prefix_is_kept(run, server):
    async def scenario():
        async with Transport(server.url + "/traces/") as transport:
            return await transport.post(UPSERT, upsert_body("c1"))

    assert run(scenario()).status == 404
    assert [r.path for r in server.records()] == ["/traces/call/upsert_batch"]


def assert_retriable_send_error_without_key(excinfo: pytest.ExceptionInfo[SendError]) -> None:
    assert excinfo.value.retriable is True
    assert API_KEY not in str(excinfo.value)
    assert not isinstance(excinfo.value, HTTPError)


def test_refused_connection_raises_retriable_send_error(run, server):
    server.down()

    async def scenario():
        async with Transport(server.url, api_key=API_KEY) as transport:
            await transport.post(UPSERT, upsert_body("c1"))

    with pytest.raises(SendError, match="cannot connect") as excinfo:
        run(scenario())
    assert_retriable_send_error_without_key(excinfo)


def test_connection_reset_raises_retriable_send_error(run, server):
    server.p_reset = 1.0

    async def scenario():
        async with Transport(server.url, api_key=API_KEY) as transport:
            await transport.post(UPSERT, upsert_body("c1"))

    with pytest.raises(SendError) as excinfo:
        run(scenario())
    assert_retriable_send_error_without_key(excinfo)
    assert server.stored_ids() == set()


def test_stalled_server_raises_retriable_send_error_at_the_timeout(run, server):
    server.stall_s = 30.0

    async def scenario():
        async with Transport(server.url, api_key=API_KEY) as transport:
            await transport.post(UPSERT, upsert_body("c1"), timeout_s=0.2)

    with pytest.raises(SendError, match="no answer within 0.2 s") as excinfo:
        run(scenario())
    assert_retriable_send_error_without_key(excinfo)


def test_credentials_in_the_base_url_never_appear_in_errors(run, server):
    url = server.url.replace("http://", f"http://api:{API_KEY}@")
    server.down()

    async def scenario():
        async with Transport(url) as transport:
            await transport.post(UPSERT, upsert_body("c1"))

    with pytest.raises(SendError) as excinfo:
        run(scenario())
    assert_retriable_send_error_without_key(excinfo)


def test_credentials_in_the_base_url_are_sent_in_place_of_an_api_key(run, server):
    # aiohttp refuses a URL's credentials next to an Authorization header (a ValueError that
    # killed the sender when ENGINE_API_KEY was set too): the URL's are the ones sent
    url = server.url.replace("http://", f"http://api:{API_KEY}@")

    async def scenario():
        async with Transport(url, api_key="another-key") as transport:
            return await transport.post(UPSERT, upsert_body("c1"))

    assert run(scenario()).status == 200
    (record,) = server.records(UPSERT)
    assert record.headers["Authorization"] == "Basic " + base64.b64encode(f"api:{API_KEY}".encode()).decode()


def test_server_that_comes_back_is_reached_again(run, server):
    async def scenario():
        async with Transport(server.url) as transport:
            assert (await transport.post(UPSERT, upsert_body("c1"))).status == 200
            server.down()
            with pytest.raises(SendError):
                await transport.post(UPSERT, upsert_body("c2"))
            server.up()
            assert (await transport.post(UPSERT, upsert_body("c3"))).status == 200

    run(scenario())
    assert server.stored_ids() == {"c1", "c3"}


def test_accepted_encodings_are_what_server_info_advertises(run, server):
    from engine.sender._transport import accepted_encodings

    async def scenario():
        async with Transport(server.url) as transport:
            return accepted_encodings(await transport.get_json("/server_info"))

    assert run(scenario()) == frozenset({"zstd", "gzip"})
    server.accepts_encodings = None
    assert run(scenario()) == frozenset()
    assert accepted_encodings(["not", "a", "dict"]) == frozenset()


def test_get_json_raises_http_error_with_reason(run, server):
    async def scenario():
        async with Transport(server.url) as transport:
            await transport.get_json("/missing")

    with pytest.raises(HTTPError, match="no route GET /missing") as excinfo:
        run(scenario())
    assert excinfo.value.status == 404 and not excinfo.value.retriable


def test_base_url_must_be_http():
    with pytest.raises(ValueError, match="http"):
        Transport("ftp://127.0.0.1/")


def test_compressor_round_trips_from_many_threads():
    compressor = Compressor(level=5)
    bodies = [msgspec.json.encode({"i": i, "pad": "x" * (i * 37 % 5000)}) for i in range(200)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        compressed = list(pool.map(compressor.compress, bodies))
    decompressor = zstandard.ZstdDecompressor()
    assert [decompressor.decompress(c) for c in compressed] == bodies


def test_compressor_rejects_an_invalid_level():
    with pytest.raises(ValueError, match="zstd level"):
        Compressor(level=99)
