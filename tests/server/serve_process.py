"""``engine serve`` as a process of its own whose log the test reads: for the tests of a
store in trouble (a full disk, an unreachable ClickHouse), where what matters is the
answer a client gets, what the log says, and what is stored once the trouble is over."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import msgspec
import pytest

from engine.wire import utcnow, uuid7


def can_mount() -> bool:
    """Root with ``unshare -m``: a test may mount a small tmpfs in a namespace of its own."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


NEEDS_MOUNT = "needs root and unshare -m (scripts/test runs as root in CI)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_health(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            urllib.request.urlopen(url + "/health", timeout=1).read()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail("engine serve did not answer /health")


def post(url: str, path: str, body: dict) -> tuple[int, dict, dict]:
    """(status, decoded answer, headers), error answers included."""
    return _answer(urllib.request.Request(url + path, method="POST",
                                          data=msgspec.json.encode(body),
                                          headers={"Content-Type": "application/json"}))


def _answer(request: urllib.request.Request) -> tuple[int, dict, dict]:
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, msgspec.json.decode(resp.read() or b"{}"), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            answer = msgspec.json.decode(body or b"{}")
        except msgspec.DecodeError:  # not ours: say what it was
            answer = {"not_json": body.decode(errors="replace")}
        return exc.code, answer, dict(exc.headers)


def get(url: str, path: str) -> tuple[int, dict]:
    """(status, decoded answer) of a GET, error answers included."""
    status, answer, _ = _answer(urllib.request.Request(url + path))
    return status, answer


def complete_call(project: str, i: int, text: str) -> dict:
    call_id = uuid7()
    return {"project_id": project, "id": call_id, "trace_id": call_id, "op_name": "predict",
            "started_at": utcnow(), "ended_at": utcnow(), "attributes": {},
            "inputs": {"i": i, "text": text}, "output": i, "summary": {}}


def stored_ids(url: str, project: str) -> list[str]:
    request = urllib.request.Request(url + "/calls/stream_query", method="POST",
                                     data=msgspec.json.encode({"project_id": project}))
    with urllib.request.urlopen(request, timeout=60) as resp:
        return [msgspec.json.decode(line)["id"] for line in resp.read().splitlines()]


def stop(server: subprocess.Popen) -> str:
    """SIGTERM (SIGKILL after 30 s); the server's stderr."""
    server.send_signal(signal.SIGTERM)
    try:
        _, err = server.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        _, err = server.communicate()
    return err
