"""The relay's closing line comes from the same counters as its /metrics: what the upstream
acknowledged, what was dead-lettered (and where), and the exit code says whether all of it
was delivered."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.faultserver import FaultServer
from tests.relay.harness import metrics, wait_until

pytestmark = pytest.mark.integration
PROJECT = "ent/relay-summary"


def _complete(i: int) -> dict:
    return {"project_id": PROJECT, "id": f"0190a0b0-0000-7000-8000-{i:012d}",
            "trace_id": f"0190a0b0-0000-7000-9000-{i:012d}", "op_name": "op",
            "started_at": "2025-01-01T00:00:00Z", "ended_at": "2025-01-01T00:00:01Z",
            "attributes": {}, "inputs": {}, "summary": {}}


def test_exit_summary_matches_the_metrics_and_counts_dead_letters(tmp_path):
    rejected = _complete(3)["id"]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")},
           "XDG_STATE_HOME": str(tmp_path)}
    with FaultServer(reject_ids=[rejected]) as upstream, subprocess.Popen(
            [sys.executable, "-m", "engine", "relay", "--listen", "127.0.0.1:0", "--upstream",
             upstream.url, "--linger-ms", "5", "--dead-letter-path", str(tmp_path / "dead.jsonl")],
            stdout=subprocess.PIPE, text=True, env=env) as proc:
        url = re.search(r"listening on (http://\S+)", proc.stdout.readline()).group(1)
        body = json.dumps({"batch": [_complete(i) for i in range(6)]}).encode()
        req = urllib.request.Request(f"{url}/v2/{PROJECT}/calls/complete", data=body,
                                     headers={"Content-Type": "application/json"})
        assert urllib.request.urlopen(req, timeout=30).status == 200
        assert wait_until(lambda: metrics(url)["engine_items_acked_total"] == 5, 30)
        seen = metrics(url)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1  # not everything was acknowledged
    (line,) = [x for x in out.splitlines() if x.startswith("engine relay: stopped")]
    acked = int(re.search(r"([\d,]+) items acknowledged", line).group(1).replace(",", ""))
    dead = int(re.search(r"([\d,]+) dead-lettered to (\S+)", line).group(1))
    assert acked == seen["engine_items_acked_total"] == 5
    assert dead == seen["engine_dead_letters_total"] == 1
    assert str(tmp_path / "dead.jsonl") in line


def test_log_format_json_covers_the_sender_process_too(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")},
           "XDG_STATE_HOME": str(tmp_path)}
    with subprocess.Popen(
            [sys.executable, "-m", "engine", "relay", "--listen", "127.0.0.1:0", "--upstream",
             "http://127.0.0.1:9", "--log-format", "json", "--shutdown-timeout-s", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        assert "listening on" in proc.stdout.readline()
        first_lines = []
        for line in proc.stderr:  # until the sender's start-up warning (or the end)
            first_lines.append(line)
            if '"engine.sender"' in line:
                break
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=60)
    records = [json.loads(line) for line in first_lines + rest.splitlines() if line.strip()]
    sender = [r for r in records if r["logger"] == "engine.sender"]
    assert sender and "cannot reach the trace server yet" in sender[0]["msg"]
    assert sender[0]["pid"] != proc.pid  # from the sender process, in the relay's format


def test_sigterm_with_the_upstream_down_persists_what_was_accepted_within_sigterm_timeout_s(
        tmp_path):
    """The relay has acknowledged these calls to its clients; SIGKILL follows SIGTERM after
    a grace period (``docker stop``: 10 s). With the upstream down it delivered for the 30 s
    of ``shutdown_timeout_s`` before persisting, past that SIGKILL: now within what is left
    of ``sigterm_timeout_s`` (here 2 s), every accepted call in the dead letters."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")},
           "XDG_STATE_HOME": str(tmp_path)}
    dead = tmp_path / "dead.jsonl"
    with subprocess.Popen(
            [sys.executable, "-m", "engine", "relay", "--listen", "127.0.0.1:0", "--upstream",
             "http://127.0.0.1:9", "--shutdown-timeout-s", "30", "--sigterm-timeout-s", "2",
             "--dead-letter-path", str(dead), "--spool-dir", "off"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env) as proc:
        url = re.search(r"listening on (http://\S+)", proc.stdout.readline()).group(1)
        body = json.dumps({"batch": [_complete(i) for i in range(6)]}).encode()
        req = urllib.request.Request(f"{url}/v2/{PROJECT}/calls/complete", data=body,
                                     headers={"Content-Type": "application/json"})
        assert urllib.request.urlopen(req, timeout=30).status == 200
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        proc.communicate(timeout=25)
        took_s = time.monotonic() - started
    assert took_s < 8, took_s
    stored = [json.loads(line) for line in dead.read_text().splitlines()]
    assert len(stored) == 6


def test_sigterm_finishes_a_request_whose_body_is_still_arriving_and_delivers_it(tmp_path):
    """SIGTERM while a client is sending its body: the rest still arrives, the calls are
    answered 200, delivered upstream, and the relay ends. Before, aiohttp's cleanup marked
    the connection closing, dropped the rest of the body and waited its 60 s for the request,
    past the SIGKILL that follows a SIGTERM (``docker stop``: 10 s)."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")},
           "XDG_STATE_HOME": str(tmp_path)}
    body = json.dumps({"batch": [_complete(i) for i in range(6)]}).encode()
    head = (f"POST /v2/{PROJECT}/calls/complete HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode()
    with FaultServer() as upstream, subprocess.Popen(
            [sys.executable, "-m", "engine", "relay", "--listen", "127.0.0.1:0", "--upstream",
             upstream.url, "--linger-ms", "5", "--sigterm-timeout-s", "8"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env) as proc:
        url = re.search(r"listening on (http://\S+)", proc.stdout.readline()).group(1)
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(head + body[:20])
            time.sleep(0.2)  # the relay has read the head and the start of the body
            proc.send_signal(signal.SIGTERM)
            assert wait_until(lambda: _refused(host, int(port)), 10)  # it is stopping
            sock.sendall(body[20:])
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        proc.communicate(timeout=30)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert proc.returncode == 0
        assert upstream.stored_ids(PROJECT) == {_complete(i)["id"] for i in range(6)}


def _refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_listen_port_in_use_is_one_line_and_starts_no_sender(tmp_path):
    """It printed the error, then an asyncio 'Unclosed client session' error (the proxy's
    session, left open), after a sender had started and said '0 items delivered'."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")},
           "XDG_STATE_HOME": str(tmp_path)}
    with FaultServer() as upstream, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "engine", "relay", "--listen",
                               f"127.0.0.1:{port}", "--upstream", upstream.url],
                              capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [done.stderr.strip()], done.stderr  # one line
    assert "cannot listen on 127.0.0.1:" in done.stderr and "already in use" in done.stderr
    assert "Unclosed" not in done.stderr and "delivered" not in done.stderr


def test_the_relay_s_start_says_where_undelivered_calls_go(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")},
           "XDG_STATE_HOME": str(tmp_path)}
    with subprocess.Popen(
            [sys.executable, "-m", "engine", "relay", "--listen", "127.0.0.1:0", "--upstream",
             "http://127.0.0.1:9", "--shutdown-timeout-s", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        assert "listening on" in proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    first = err.splitlines()[0]
    # the default spool: one folder per upstream under the state directory
    assert "accepting traffic anyway" in first and "dead letters" not in first
    assert f"go to the spool {tmp_path / 'engine' / 'spool' / '127.0.0.1-9-'}" in first
