"""``engine serve`` as a real process: URL on stdout, default db path and modes, SIGTERM."""

import contextlib
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request

import msgspec
import pytest

from engine.server import default_db_path, serve_subprocess, spawn_server, stop_server
from tests.server.harness import complete

pytestmark = pytest.mark.integration


def _post(url: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        url + path, data=msgspec.json.encode(body), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return msgspec.json.decode(resp.read())


def _stream_ids(url: str) -> list[str]:
    request = urllib.request.Request(
        url + "/calls/stream_query", data=b'{"project_id":"ent/proj"}', method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return [msgspec.json.decode(line)["id"] for line in resp.read().splitlines()]


def test_sigterm_stops_cleanly_and_calls_survive_a_restart(tmp_path):
    db = tmp_path / "share" / "engine" / "traces.db"  # folders it makes: owner-only
    proc, url = spawn_server(db)
    try:
        _post(url, "/v2/ent/proj/calls/complete", {"batch": [complete("kept")]})
    finally:
        exit_code = stop_server(proc)
    assert exit_code == 0
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "share").stat().st_mode) == 0o700  # was 0755 (mkdir -p)
    with serve_subprocess(db) as url_again:
        assert _stream_ids(url_again) == ["kept"]


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _wait_refused(url: str) -> None:
    """Until the server no longer accepts connections: it has begun to stop."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            _connect(url).close()
        except ConnectionRefusedError:
            return
        time.sleep(0.01)
    pytest.fail("engine serve still accepts connections 30 s after SIGTERM")


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sent until it closed the connection."""
    data = b""
    with contextlib.suppress(ConnectionError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _complete_request(call_id: str, keep_alive: bool = False) -> tuple[bytes, bytes]:
    body = msgspec.json.encode({"batch": [complete(call_id)]})
    head = (f"POST /v2/ent/proj/calls/complete HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            + ("" if keep_alive else "Connection: close\r\n") + "\r\n")
    return head.encode(), body


def test_sigterm_finishes_a_request_whose_body_is_still_arriving(tmp_path):
    """SIGTERM while a client is sending its body (the engine's sender posts bodies of
    megabytes): the rest of the body still arrives, the calls are stored and answered, and
    the server stops at once. Before, aiohttp's graceful shutdown marked every connection
    closing first, and a closing connection drops the bytes that arrive: the request waited
    for the rest of its body until --shutdown-timeout-s (60 s) and was cancelled unanswered
    (under a team's load, 3 of 6 SIGTERMs took 15-21 s, the clients refused all along)."""
    db = tmp_path / "t.db"
    proc, url = spawn_server(db, flags=("--shutdown-timeout-s", "10"))
    try:
        head, body = _complete_request("mid-body")
        with _connect(url) as sock:
            sock.sendall(head + body[:20])
            time.sleep(0.2)  # the server has read the head and the start of the body
            began = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            _wait_refused(url)
            sock.sendall(body[20:])
            answer = _answer(sock)
        assert proc.wait(30) == 0
        stopped_s = time.monotonic() - began
    finally:
        stop_server(proc)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:500]
    assert stopped_s < 5, f"stopped {stopped_s:.1f} s after SIGTERM"  # not the 10 s timeout
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT id FROM calls").fetchall() == [("mid-body",)]


def test_a_request_begun_after_sigterm_on_a_kept_alive_connection_gets_a_503_to_retry(tmp_path):
    """Once stopping, a new request on a connection kept alive is answered 503 with
    Retry-After and the connection closed: the server waits only for the requests that
    had begun, however busy its clients' connections are, and stops once they end."""
    proc, url = spawn_server(tmp_path / "t.db", flags=("--shutdown-timeout-s", "10"))
    try:
        with _connect(url) as kept, _connect(url) as busy:
            head, body = _complete_request("first", keep_alive=True)
            kept.sendall(head + body)
            assert kept.recv(65536).startswith(b"HTTP/1.1 200")
            head, busy_body = _complete_request("busy")  # under way: holds the server in its drain
            busy.sendall(head + busy_body[:20])
            time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            _wait_refused(url)
            head, body = _complete_request("late", keep_alive=True)
            kept.sendall(head + body[:20])  # its body too is still arriving
            time.sleep(0.2)
            busy.sendall(busy_body[20:])  # the request begun before SIGTERM ends first
            assert _answer(busy).startswith(b"HTTP/1.1 200")
            time.sleep(0.2)
            kept.sendall(body[20:])
            ended = time.monotonic()
            late = _answer(kept)
        assert proc.wait(30) == 0
        stopped_s = time.monotonic() - ended
    finally:
        stop_server(proc)
    # its body was read before the 503: left unread, aiohttp lingered up to 10 s reading it
    # after the answer, and the shutdown dropped those bytes (11.5 s to stop under load)
    assert stopped_s < 5, f"stopped {stopped_s:.1f} s after the last request ended"
    assert late.startswith(b"HTTP/1.1 503"), late[:500]
    assert b"Retry-After: 1" in late and b"Connection: close" in late, late[:500]
    assert b"engine serve is stopping" in late, late[:500]


def test_sigint_also_stops_cleanly(tmp_path):
    proc, _ = spawn_server(tmp_path / "t.db")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0


def test_count_store_process_reports_counts(tmp_path):
    with serve_subprocess(store="count") as url:
        _post(url, "/v2/ent/proj/calls/complete", {"batch": [complete("a"), complete("b")]})
        with urllib.request.urlopen(url + "/stats", timeout=30) as resp:
            stats = msgspec.json.decode(resp.read())
    assert stats["store"] == "count" and stats["calls_complete"] == 2


def test_default_db_path_follows_xdg_data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_db_path() == tmp_path / "xdg" / "engine" / "traces.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_db_path() == tmp_path / "home" / ".local" / "share" / "engine" / "traces.db"


def test_api_key_from_env_is_enforced_and_never_printed(tmp_path):
    key = "env-key-never-printed-42"
    env = {**os.environ, "ENGINE_API_KEY": key, "XDG_DATA_HOME": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
    )  # fmt: skip
    try:
        first_line = proc.stdout.readline()
        url = first_line.split("listening on ")[1].split()[0]
        with pytest.raises(urllib.error.HTTPError) as refused:
            _post(url, "/calls/query_stats", {"project_id": "ent/proj"})
        refused.value.close()
        assert refused.value.code == 401
    finally:
        stop_server(proc)
    output = first_line + proc.stdout.read()
    proc.stdout.close()
    assert key not in output
    assert (tmp_path / "engine" / "traces.db").exists()


def test_bad_cli_arguments_exit_with_usage_error():
    result = subprocess.run(
        [sys.executable, "-m", "engine", "serve", "--max-body-bytes", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "--max-body-bytes" in result.stderr


_PARENT = """
import signal, sys
from engine.server import spawn_server
proc, url = spawn_server(sys.argv[1])
print(proc.pid, url, flush=True)
signal.pause()
"""


def test_a_server_child_stops_once_its_parent_is_killed(tmp_path):
    from engine.ring._files import process_start_ticks
    from tests.relay.harness import wait_until

    errors = (tmp_path / "stderr").open("w")  # the server's too: it inherits its parent's
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(tmp_path / "t.db")],
                              stdout=subprocess.PIPE, stderr=errors, text=True)
    try:
        pid = int(parent.stdout.readline().split()[0])
    finally:
        parent.kill()  # SIGKILL: no clean-up of its own runs
        parent.communicate()
    gone = wait_until(lambda: process_start_ticks(pid) is None, 30)
    if not gone:
        os.kill(pid, signal.SIGKILL)
    errors.close()
    assert gone
    # its last line to the dead parent's pipe was said as "cannot listen on ...: Broken pipe"
    assert "error" not in (tmp_path / "stderr").read_text()
