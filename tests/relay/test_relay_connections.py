"""``engine relay`` is bounded as ``engine serve`` is (engine/server/_connections.py): past
its connection cap a new connection gets a 503 naming the relay and the limit, and once
connections go the relay serves again."""

import socket
import struct
import time

import msgspec
import pytest

from engine.server import serve_subprocess
from tests import resources
from tests.relay.harness import metrics, relay_subprocess, wait_until

pytestmark = pytest.mark.integration


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _read_to_close(sock: socket.socket) -> bytes:
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def _refusal(url: str) -> bytes:
    """What a connection past the cap is told: the relay answers as it accepts, so nothing
    is sent (a request it never reads would turn its close into a reset)."""
    with _connect(url) as sock:
        return _read_to_close(sock)


def _ask(url: str) -> bytes:
    with _connect(url) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        return _read_to_close(sock)


def _served_again(url: str, timeout_s: float = 30.0) -> bytes:
    """The first answer to a fresh connection that is not a refusal (the relay sees closed
    connections go a moment after the client closes them)."""
    deadline = time.monotonic() + timeout_s
    while _refusal_pending(url) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _ask(url)


def _refusal_pending(url: str) -> bool:
    with _connect(url) as sock:
        sock.settimeout(0.5)
        try:
            return sock.recv(12).startswith(b"HTTP/1.1 503")
        except TimeoutError:
            return False  # accepted: it waits for a request


def _served_on(sock: socket.socket) -> bytes:
    """The head of the answer to one request on an open connection."""
    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
        answer += chunk
    return answer.partition(b"\r\n\r\n")[0]


def test_relay_connections_past_the_cap_get_a_503_naming_it_and_then_it_serves_again(tmp_path):
    with serve_subprocess(tmp_path / "t.db") as upstream, relay_subprocess(
        upstream, "--max-connections", "3",
    ) as (url, _):  # fmt: skip
        held = [_connect(url) for _ in range(3)]
        try:
            refused = _refusal(url)  # the fourth
            in_cap = _served_on(held[0])  # those within the cap are served all along
        finally:
            for sock in held:
                sock.close()
        after = _served_again(url)
    head, _, body = refused.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in head
    assert msgspec.json.decode(body) == {
        "reason": "engine relay is at its limit of 3 connections; retry later"}
    assert in_cap.startswith(b"HTTP/1.1 200") and after.startswith(b"HTTP/1.1 200")


def _leave_mid_body(url: str, reset: bool) -> None:
    """A client that sends a request head and part of its body, then goes (reset or closed)."""
    sock = _connect(url)
    sock.sendall(b"POST /v2/e/p/calls/complete HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"batch\": [")
    if reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_relay_clients_that_leave_mid_request_are_counted_not_logged_and_hold_nothing(tmp_path):
    """Each one wrote aiohttp's ~40-line traceback into the relay's log (2,000 clients: 8 MB)."""
    with serve_subprocess(tmp_path / "t.db") as upstream, relay_subprocess(
        upstream, with_logs=True,
    ) as (url, proc):  # fmt: skip
        def gone() -> float:
            return metrics(url)["engine_relay_clients_gone_total"]

        for i in range(4):  # warm-up
            _leave_mid_body(url, reset=bool(i % 2))
        assert wait_until(lambda: gone() == 4, timeout_s=30)
        before = resources.held(proc.pid)
        for i in range(30):
            _leave_mid_body(url, reset=bool(i % 2))
        assert wait_until(lambda: gone() == 34, timeout_s=30)
        assert wait_until(lambda: not resources.grown(before, resources.held(proc.pid)), 30)
        after = resources.held(proc.pid)
        log = "".join(proc.output_lines)
    assert resources.grown(before, after) == {}, (before, after)
    assert "Error handling request" not in log and "Traceback" not in log, log[-3000:]
