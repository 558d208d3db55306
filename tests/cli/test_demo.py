"""``engine demo`` as a user runs it: a temporary store that goes once the run is over, and a
Ctrl-C that stops it at once, with one line, after its own server stored what was sent."""

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from tests.relay.harness import wait_until

pytestmark = pytest.mark.integration


def _env(tmp_path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    return {**base, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}


def _stored(url: str) -> int:
    request = urllib.request.Request(url + "/calls/query_stats",
                                     data=b'{"project_id": "demo/eval"}')
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())["count"]


def _refused(url: str) -> bool:
    try:
        _stored(url)
    except urllib.error.URLError:
        return True
    return False


def test_a_run_removes_its_temporary_folder(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "engine", "demo", "--processes", "1", "--examples", "100"],
        capture_output=True, text=True, timeout=120, env=_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "[OK]" in result.stdout
    assert list(tmp_path.glob("engine-demo-*")) == []


def test_ctrl_c_stops_with_one_line_and_the_server_stays_until_delivered(tmp_path):
    # a terminal's Ctrl-C: SIGINT to the whole foreground process group, SIGINT handled
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "demo", "--processes", "2", "--examples", "1000000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path),
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        proc.stdout.readline()
        url = proc.stdout.readline().split("listening on ")[1].strip()
        assert wait_until(lambda: _stored(url) > 0, 60)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.splitlines()[-1] == "engine: interrupted", err
    assert list(tmp_path.glob("engine-demo-*")) == []  # no dead letters: nothing kept
    assert wait_until(lambda: _refused(url), 30)  # and its server stopped


def test_a_store_the_server_refuses_is_one_line_each(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    result = subprocess.run([sys.executable, "-m", "engine", "demo", "--db", str(junk)],
                            capture_output=True, text=True, timeout=120, env=_env(tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    serve_line, demo_line = result.stderr.splitlines()
    assert serve_line.startswith("engine: error: serve: ") and str(junk) in serve_line
    assert demo_line.startswith("engine: error: demo: the local trace server did not start")
    assert "exited with status 1" in demo_line and "unexpected" not in demo_line


def test_sigterm_stops_it_as_ctrl_c_does(tmp_path):
    """`timeout`, a scheduler: SIGTERM to the demo alone. It died by the signal, leaving its
    temporary folder (and its workers until they saw their parent gone)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "demo", "--processes", "2", "--examples", "1000000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path))
    try:
        proc.stdout.readline()
        url = proc.stdout.readline().split("listening on ")[1].strip()
        assert wait_until(lambda: _stored(url) > 0, 60)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, err
    assert "Traceback" not in err and err.splitlines()[-1] == "engine: terminated (SIGTERM)", err
    assert list(tmp_path.glob("engine-demo-*")) == []
    assert wait_until(lambda: _refused(url), 30)
