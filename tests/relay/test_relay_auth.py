"""Auth of ``engine relay`` and secrets in URLs: one test per rule (docs/serve.md, "Keys").

1. with a keys file, every relay route needs a client key (but ``GET /health``, the relay's
   own liveness probe); a key may only write the projects its line grants, and its items
   are delivered under the relay's own upstream key;
2. without keys the relay serves loopback only;
3. credentials in the upstream URL never reach a command line, a log line or a printed line.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import msgspec
import pytest

from engine.common._redact import redact_url
from engine.server import serve_subprocess
from tests.relay.harness import relay_subprocess, wait_until

UPSTREAM_KEY = "upstream-key-0123456789"
CLIENT_KEY = "client-key-0123456789"
T0 = "2026-01-02T03:04:05Z"
CALL = "0190a0b0-0000-7000-8000-0000000000d4"


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"api:{key}".encode()).decode()}


def _post(url: str, body: dict, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}),
                                    timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def _complete(project: str, call_id: str = CALL) -> dict:
    return {"project_id": project, "id": call_id, "trace_id": call_id, "op_name": "op",
            "started_at": T0, "ended_at": T0, "attributes": {}, "inputs": {}, "summary": {}}  # fmt: skip


def _stored(upstream: str, project: str) -> set[str]:
    status, body = _post(upstream + "/calls/stream_query", {"project_id": project}, _auth(UPSTREAM_KEY))
    assert status == 200, body
    return {msgspec.json.decode(line)["id"] for line in body.splitlines() if line.strip()}


@pytest.mark.integration
def test_relay_keys_gate_every_route_and_each_project_then_deliver_under_its_own_key(tmp_path):
    keys = tmp_path / "relay-keys"
    keys.write_text(f"{CLIENT_KEY} rw team-a/*\n")
    keys.chmod(0o600)
    env = {**os.environ, "ENGINE_API_KEY": UPSTREAM_KEY}
    with serve_subprocess(tmp_path / "t.db", api_key=UPSTREAM_KEY) as upstream, relay_subprocess(
        upstream, "--keys-file", str(keys), "--linger-ms", "5", env=env,
    ) as (relay, _):  # fmt: skip
        complete = f"{relay}/v2/team-a/p/calls/complete"
        anonymous = _post(complete, {"batch": [_complete("team-a/p")]})
        upstream_key = _post(complete, {"batch": [_complete("team-a/p")]}, _auth(UPSTREAM_KEY))
        proxied = _post(relay + "/objs/query", {"project_id": "team-a/p"})
        other = _post(f"{relay}/v2/team-b/p/calls/complete", {"batch": [_complete("team-b/p")]},
                      _auth(CLIENT_KEY))  # fmt: skip
        allowed = _post(complete, {"batch": [_complete("team-a/p")]}, _auth(CLIENT_KEY))
        health = _get(relay + "/health")  # a load balancer's probe carries no key
        health_wrong_key = _get(relay + "/health", _auth("not-a-key"))
        delivered = wait_until(lambda: _stored(upstream, "team-a/p") == {CALL}, 30)
    assert anonymous[0] == upstream_key[0] == proxied[0] == 401
    assert other[0] == 403 and b"may not write project 'team-b/p'" in other[1]
    assert allowed == (200, b"{}") and delivered  # upstream took it under the relay's key
    assert health[0] == 200 and json.loads(health[1]) == {"status": "ok", "role": "relay"}  # its own, not proxied
    assert health_wrong_key[0] == 401 and b"not-a-key" not in health_wrong_key[1]


def test_relay_without_keys_refuses_to_listen_beyond_loopback(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ENGINE_KEYS_FILE"}
    result = subprocess.run(
        [sys.executable, "-m", "engine", "relay", "--listen", "0.0.0.0:0",
         "--upstream", "http://127.0.0.1:9"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert result.returncode == 2 and "will not listen on 0.0.0.0 without API keys" in result.stderr


def test_redact_url_hides_userinfo_and_secret_query_values():
    assert redact_url("https://api:s3cret@trace.example:8443/x?api_key=k1&n=2") == (
        "https://***@trace.example:8443/x?api_key=***&n=2")
    assert redact_url("http://127.0.0.1:6345") == "http://127.0.0.1:6345"


@pytest.mark.integration
def test_credentials_in_the_upstream_url_reach_no_command_line_and_no_output(tmp_path):
    secret = "url-secret-0123456789"
    with serve_subprocess(tmp_path / "t.db", api_key=secret) as upstream:
        with_credentials = upstream.replace("http://", f"http://api:{secret}@")
        env = {k: v for k, v in os.environ.items() if k not in ("ENGINE_API_KEY", "WANDB_API_KEY")}
        with relay_subprocess(with_credentials, "--linger-ms", "5", env=env) as (relay, proc):
            sent = _post(f"{relay}/v2/team-a/p/calls/complete", {"batch": [_complete("team-a/p")]})
            delivered = wait_until(lambda: _stored_with(upstream, secret) == {CALL}, 30)
            command_lines = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        printed = "".join(proc.output_lines)
    assert sent == (200, b"{}") and delivered  # the sender used the URL's credentials
    assert "engine.sender" in command_lines and secret not in command_lines
    assert "***@127.0.0.1" in printed and secret not in printed


@pytest.mark.integration
def test_credentials_in_the_upstream_url_win_over_engine_api_key_and_reach_no_log_line(tmp_path):
    # before: the start-up check read "api:KEY@127.0.0.1" as a host name and logged the key,
    # the sender died on aiohttp's "cannot combine" error, and its exit line showed the key
    secret = "url-secret-0123456789"
    with serve_subprocess(tmp_path / "t.db", api_key=secret) as upstream:
        with_credentials = upstream.replace("http://", f"http://api:{secret}@")
        env = {**os.environ, "ENGINE_API_KEY": "another-key-0123456789"}
        with relay_subprocess(with_credentials, "--linger-ms", "5", env=env,
                              with_logs=True) as (relay, proc):  # fmt: skip
            sent = _post(f"{relay}/v2/team-a/p/calls/complete", {"batch": [_complete("team-a/p")]})
            delivered = wait_until(lambda: _stored_with(upstream, secret) == {CALL}, 30)
        printed = "".join(proc.output_lines)
    assert sent == (200, b"{}") and delivered, printed
    assert "items delivered to http://***@127.0.0.1" in printed  # the sender's exit line
    assert secret not in printed and "cannot reach" not in printed


@pytest.mark.integration
def test_credentials_in_an_unreachable_upstream_url_reach_no_log_line(tmp_path):
    secret = "url-secret-0123456789"
    with socket.socket() as closed:  # bound, never listening: refused
        closed.bind(("127.0.0.1", 0))
        upstream = f"http://api:{secret}@127.0.0.1:{closed.getsockname()[1]}"
        flags = ("--linger-ms", "5", "--shutdown-timeout-s", "1",
                 "--dead-letter-path", str(tmp_path / "dead.jsonl"))
        with relay_subprocess(upstream, *flags, with_logs=True) as (relay, proc):
            sent = _post(f"{relay}/v2/team-a/p/calls/complete", {"batch": [_complete("team-a/p")]})
            warned = wait_until(lambda: "failing since" in "".join(proc.output_lines), 30)
        printed = "".join(proc.output_lines)
    assert sent == (200, b"{}") and warned, printed
    assert "cannot reach http://***@127.0.0.1" in printed  # the start-up check
    assert "0 items delivered to http://***@127.0.0.1" in printed  # the sender's exit line
    assert secret not in printed


def _stored_with(upstream: str, key: str) -> set[str]:
    status, body = _post(upstream + "/calls/stream_query", {"project_id": "team-a/p"}, _auth(key))
    return {msgspec.json.decode(line)["id"] for line in body.splitlines() if line.strip()} if status == 200 else set()


@pytest.mark.integration
def test_an_unreachable_upstream_is_one_line_until_it_answers_again(tmp_path):
    """Proxied reads while the upstream is down answer 502 with the reason (the client's);
    the operator gets one line when it goes and one when it is back, with the count, and
    never the URL's credentials."""
    import http.server
    import threading

    class Answers(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    def up(port: int) -> http.server.HTTPServer:
        server = http.server.HTTPServer(("127.0.0.1", port), Answers)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    secret = "url-secret-0123456789"
    upstream_server = up(0)
    port = upstream_server.server_address[1]
    upstream = f"http://api:{secret}@127.0.0.1:{port}"
    flags = ("--linger-ms", "5", "--shutdown-timeout-s", "1",
             "--dead-letter-path", str(tmp_path / "dead.jsonl"))
    try:
        with relay_subprocess(upstream, *flags, with_logs=True) as (relay, proc):
            def get() -> int:
                try:
                    with urllib.request.urlopen(f"{relay}/obj/read?x=1", timeout=30) as resp:
                        return resp.status
                except urllib.error.HTTPError as exc:
                    return exc.code

            assert get() == 200
            upstream_server.shutdown()
            upstream_server.server_close()
            assert [get() for _ in range(3)] == [502, 502, 502]
            upstream_server = up(port)
            assert get() == 200
            # the line it is back ("the upstream ... answers again (N ..."), not the line it went
            # ("... answer 502 until it answers again"), which the first wait matched
            back = wait_until(lambda: "502 meanwhile" in "".join(proc.output_lines), 10)
            printed = "".join(proc.output_lines)
    finally:
        upstream_server.shutdown()
        upstream_server.server_close()
    assert back, printed
    gone = [line for line in printed.splitlines() if "unreachable for GET /obj/read" in line]
    assert len(gone) == 1, printed
    assert "cannot connect" in gone[0] and f"upstream http://127.0.0.1:{port} " in gone[0]
    assert "(3 proxied request(s) answered 502 meanwhile)" in printed
    assert secret not in printed
