"""Bounded connections: a cap with a clear refusal, slow heads and bodies cut off, and the
server serving others all along (engine/server/_connections.py)."""

import asyncio
import socket
import struct

import msgspec
import pytest

from engine.server import _body, start_server
from engine.server._state import STATE
from tests import resources
from tests.server.harness import PROJECT


async def _open(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    """What the server sent before it closed (a reset after its answer is still a close)."""
    data = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), 30):
            data += chunk
    except ConnectionError:
        pass
    return data


def _write(writer: asyncio.StreamWriter, data: bytes) -> bool:
    """False once the server has closed the connection."""
    if writer.is_closing():
        return False
    try:
        writer.write(data)
    except (ConnectionError, RuntimeError):
        return False
    return True


async def _ask(url: str, path: str = "/health") -> bytes:
    reader, writer = await _open(url)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return answer


def test_connections_past_the_cap_get_a_503_with_a_reason_and_others_keep_working(run, db_path):
    async def scenario():
        runner, url = await start_server(port=0, db_path=db_path, max_connections=3)
        try:
            held = [await _open(url) for _ in range(3)]
            refused = await _ask(url)
            for _, writer in held:
                writer.close()
            await asyncio.sleep(0)  # let the server see them go
            for _ in range(100):
                if (answer := await _ask(url)).startswith(b"HTTP/1.1 200"):
                    break
                await asyncio.sleep(0.05)
            return refused, answer
        finally:
            await runner.cleanup()

    refused, after = run(scenario())
    head, _, body = refused.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in head
    assert msgspec.json.decode(body)["reason"].startswith("engine serve is at its limit of 3")
    assert after.startswith(b"HTTP/1.1 200")


def test_a_client_trickling_its_request_head_is_cut_off(run, db_path):
    async def scenario():
        runner, url = await start_server(port=0, db_path=db_path, header_timeout_s=0.5)
        try:
            reader, writer = await _open(url)
            writer.write(b"POST /calls/query_stats HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            for _ in range(100):  # one header byte every 50 ms: never a complete head
                if reader.at_eof() or not _write(writer, b"X"):
                    break
                await asyncio.sleep(0.05)
            closed = await _read_all(reader)
            writer.close()
            return closed, await _ask(url)
        finally:
            await runner.cleanup()

    closed, other = run(scenario())
    assert closed == b"" and other.startswith(b"HTTP/1.1 200")


async def _trickle(url: str, head: bytes, body: bytes, pause_s: float) -> bytes:
    """Send ``head``, then ``body`` a byte every ``pause_s`` until the server answers; the answer."""
    reader, writer = await _open(url)
    writer.write(head)
    answer = b""
    for byte in body:
        try:  # the pause between bytes, cut short by the server's answer
            answer = await asyncio.wait_for(reader.read(1), pause_s)
            break
        except asyncio.TimeoutError:
            if not _write(writer, bytes([byte])):
                break
    head = answer + await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    writer.close()  # not waiting for the server's close: it lingers over the unread body
    return head + await asyncio.wait_for(reader.readexactly(length), 30)


@pytest.fixture
def short_body_timeouts(monkeypatch):
    monkeypatch.setattr(_body, "BODY_IDLE_TIMEOUT_S", 0.5)
    monkeypatch.setattr(_body, "BODY_GRACE_S", 0.3)


def test_a_body_that_stalls_or_crawls_is_a_408(run, db_path, short_body_timeouts):
    body = msgspec.json.encode({"project_id": PROJECT})
    head = (b"POST /calls/query_stats HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body) + 100}\r\n\r\n".encode() + body[:5])  # fmt: skip

    async def scenario():
        runner, url = await start_server(port=0, db_path=db_path)
        try:
            return (await _trickle(url, head, body[5:], 1.0),
                    await _trickle(url, head, body[5:], 0.1))
        finally:
            await runner.cleanup()

    stalled, crawling = run(scenario())
    assert stalled.startswith(b"HTTP/1.1 408") and b"no byte of the request body" in stalled
    assert crawling.startswith(b"HTTP/1.1 408") and b"bytes/s" in crawling


def test_a_file_upload_that_stalls_or_crawls_is_a_408_and_frees_its_connection(
        run, db_path, short_body_timeouts):
    """A multipart body keeps the pace of a JSON one: trickling uploads held every
    connection of the cap, and then even ``GET /health`` got a 503."""
    head = (b"POST /file/create HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
            b'--b\r\nContent-Disposition: form-data; name="project_id"\r\n\r\n'
            + PROJECT.encode() + b'\r\n--b\r\nContent-Disposition: form-data; name="file"; '
            b'filename="f"\r\n\r\n')  # fmt: skip

    async def scenario():
        runner, url = await start_server(port=0, db_path=db_path, max_connections=2)
        try:
            return (await _trickle(url, head, b"a" * 1000, 1.0),
                    await _trickle(url, head, b"a" * 1000, 0.1), await _ask(url))
        finally:
            await runner.cleanup()

    stalled, crawling, health = run(scenario())
    assert stalled.startswith(b"HTTP/1.1 408") and b"no byte of the request body" in stalled
    assert crawling.startswith(b"HTTP/1.1 408") and b"bytes/s" in crawling
    assert health.startswith(b"HTTP/1.1 200")


async def _leave_mid_body(url: str, reset: bool) -> None:
    """A client that sends a request head and part of its body, then goes: a reset (a
    killed process, a load balancer dropping it) or a plain close."""
    reader, writer = await _open(url)
    writer.write(b"POST /v2/e/p/calls/complete HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"batch\": [")
    await writer.drain()
    if reset:
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                   struct.pack("ii", 1, 0))
    writer.close()


async def _until(predicate, timeout_s: float = 30.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def test_clients_that_leave_mid_request_are_counted_not_logged_and_hold_nothing(run, db_path,
                                                                                 caplog):
    """aiohttp logs the traceback of every exception a handler raises: each client that
    left mid-body wrote ~40 lines of ConnectionResetError into the log (2,000 of them, 8 MB
    into the relay's). Now they are counted (``clients_gone``); the connections go."""
    async def scenario():
        runner, url = await start_server(port=0, db_path=db_path)
        state = runner.app[STATE]
        try:
            for i in range(4):  # warm-up: the store's first write, the loop's buffers
                await _leave_mid_body(url, reset=bool(i % 2))
            await _until(lambda: state.counters.clients_gone == 4)
            before = resources.held()
            for i in range(40):
                await _leave_mid_body(url, reset=bool(i % 2))
            counted = await _until(lambda: state.counters.clients_gone == 44)
            await _until(lambda: not resources.grown(before, resources.held()))
            return counted, before, resources.held(), await _ask(url)
        finally:
            await runner.cleanup()

    counted, before, after, health = run(scenario())
    assert counted
    assert resources.grown(before, after) == {}, (before, after)
    assert [r.getMessage() for r in caplog.records if r.name == "aiohttp.server"] == []
    assert health.startswith(b"HTTP/1.1 200")


def test_a_new_connection_per_request_leaves_nothing_behind(run, db_path):
    """Health checkers and naive clients connect once per request."""
    async def scenario():
        runner, url = await start_server(port=0, db_path=db_path)
        try:
            for _ in range(20):
                assert (await _ask(url)).startswith(b"HTTP/1.1 200")
            before = resources.held()
            for _ in range(300):
                assert (await _ask(url)).startswith(b"HTTP/1.1 200")
            await _until(lambda: not resources.grown(before, resources.held()))
            return before, resources.held()
        finally:
            await runner.cleanup()

    before, after = run(scenario())
    assert resources.grown(before, after) == {}, (before, after)
