"""Body limits, compression, bad bodies and auth: every refusal is JSON with a reason, never 500."""

import asyncio
import gzip

import msgspec
import zstandard

from engine.server import start_server
from tests.server.harness import complete, serving, start, upsert_batch

LIMIT_BYTES = 64 * 1024
COMPLETE = "/v2/ent/proj/calls/complete"


def _big_batch(n_bytes: int) -> bytes:
    """A valid complete-call body of at least ``n_bytes`` (highly compressible)."""
    call = complete("big")
    call["inputs"] = {"text": "x" * n_bytes}
    return msgspec.json.encode({"batch": [call]})


def test_content_length_over_limit_is_refused_before_reading(run, db_path):
    """Raw socket: declare a huge body, send none of it; the 413 must still come back."""

    async def scenario():
        async with serving(db_path, max_body_bytes=LIMIT_BYTES) as api:
            host, port = api.url.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                f"POST {COMPLETE} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {LIMIT_BYTES * 100}\r\n\r\n".encode()
            )
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            answer = await asyncio.wait_for(reader.readexactly(length), 30)
            writer.close()
            await writer.wait_closed()
            return head, msgspec.json.decode(answer)

    head, answer = run(scenario())
    assert head.startswith(b"HTTP/1.1 413") and "Content-Length 6553600" in answer["reason"]


def test_body_over_limit_gets_413_with_reason(run, db_path):
    async def scenario():
        async with serving(db_path, max_body_bytes=LIMIT_BYTES) as api:
            return await api.post(COMPLETE, _big_batch(LIMIT_BYTES)), await api.query()

    (status, answer), calls = run(scenario())
    assert status == 413 and "65536-byte" in answer["reason"] and calls == []


def test_chunked_body_over_limit_gets_413(run, db_path):
    body = _big_batch(LIMIT_BYTES)

    async def chunks():
        for i in range(0, len(body), 8192):
            yield body[i : i + 8192]

    async def scenario():
        async with (
            serving(db_path, max_body_bytes=LIMIT_BYTES) as api,
            api.session.post(api.url + COMPLETE, data=chunks()) as resp,
        ):
            return (
                resp.status,
                resp.request_info.headers.get("Transfer-Encoding"),
                await resp.json(),
            )

    status, transfer_encoding, answer = run(scenario())
    assert transfer_encoding == "chunked"
    assert status == 413 and "request body exceeds" in answer["reason"]


def test_zstd_and_gzip_bodies_are_accepted(run, db_path):
    plain = msgspec.json.encode({"batch": [complete("z")]})
    zstd_body = zstandard.ZstdCompressor().compress(plain)
    gzip_body = gzip.compress(msgspec.json.encode({"batch": [complete("g")]}))

    async def scenario():
        async with serving(db_path) as api:
            z = await api.post(COMPLETE, zstd_body, {"Content-Encoding": "zstd"})
            g = await api.post(COMPLETE, gzip_body, {"Content-Encoding": "gzip"})
            return z, g, await api.query()

    z, g, calls = run(scenario())
    assert z == g == (200, {})
    assert sorted(c["id"] for c in calls) == ["g", "z"]


def test_decompressed_size_is_limited_for_zstd_and_gzip(run, db_path):
    """A small compressed body that inflates past the limit (a zip bomb) gets 413."""
    plain = _big_batch(LIMIT_BYTES * 50)
    bombs = {
        "zstd": zstandard.ZstdCompressor().compress(plain),
        "gzip": gzip.compress(plain),
    }
    assert all(len(b) < LIMIT_BYTES for b in bombs.values())

    async def scenario():
        async with serving(db_path, max_body_bytes=LIMIT_BYTES) as api:
            return {
                enc: await api.post(COMPLETE, bomb, {"Content-Encoding": enc})
                for enc, bomb in bombs.items()
            }

    for status, answer in run(scenario()).values():
        assert status == 413 and "decompressed body" in answer["reason"]


def test_zstd_frame_without_content_size_is_still_limited(run, db_path):
    plain = _big_batch(LIMIT_BYTES * 10)
    streamed = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    bomb = streamed.compress(plain) + streamed.flush()

    async def scenario():
        async with serving(db_path, max_body_bytes=LIMIT_BYTES) as api:
            return await api.post(COMPLETE, bomb, {"Content-Encoding": "zstd"})

    status, answer = run(scenario())
    assert status == 413 and "decompressed body" in answer["reason"]


def test_corrupt_compressed_body_and_unknown_encoding_are_refused(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            return [
                await api.post(COMPLETE, b"not zstd at all", {"Content-Encoding": "zstd"}),
                await api.post(COMPLETE, b"not gzip at all", {"Content-Encoding": "gzip"}),
                await api.post(COMPLETE, b"{}", {"Content-Encoding": "br"}),
            ]

    answers = run(scenario())
    assert [status for status, _ in answers] == [400, 400, 415]
    assert all(answer["reason"] for _, answer in answers)


def test_malformed_json_is_400_and_schema_violation_is_422_naming_the_field(run, db_path):
    wrong_type = start("t")
    wrong_type["inputs"] = "not an object"

    async def scenario():
        async with serving(db_path) as api:
            return [
                await api.post("/call/upsert_batch", b'{"batch": [}'),
                await api.post("/call/upsert_batch", upsert_batch(("start", wrong_type))),
                await api.post("/call/upsert_batch", {"batch": [{"mode": "nope", "req": {}}]}),
                await api.post("/call/upsert_batch", {"batch": [], "extra": 1}),
                await api.post("/calls/stream_query", {"project_id": "ent/proj", "limit": -1}),
                await api.post("/call/start", b"\xff\xfe"),
            ]

    answers = run(scenario())
    assert [s for s, _ in answers] == [400, 422, 422, 422, 422, 400]
    assert "malformed JSON" in answers[0][1]["reason"]
    assert "$.batch[0].req.start.inputs" in answers[1][1]["reason"]
    assert "mode" in answers[2][1]["reason"]
    assert "extra" in answers[3][1]["reason"]
    assert "$.limit" in answers[4][1]["reason"]


def test_unknown_route_and_wrong_method_answer_json(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            return await api.get("/no/such/route"), await api.get("/call/start")

    (missing, missing_answer), (method, method_answer) = run(scenario())
    assert missing == 404 and missing_answer["reason"]
    assert method == 405 and method_answer["reason"]


def test_server_binds_loopback_by_default(db_path):
    async def scenario():
        runner, url = await start_server(port=0, db_path=db_path)
        try:
            return url
        finally:
            await runner.cleanup()

    assert asyncio.run(scenario()).startswith("http://127.0.0.1:")
