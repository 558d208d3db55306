"""``engine serve`` as a real process: URL on stdout, default db path and modes, SIGTERM."""

import os
import signal
import stat
import subprocess
import sys
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
