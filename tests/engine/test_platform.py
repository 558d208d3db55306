"""The engine's producers and sender run on Linux only (they rely on /proc and shared
memory; elsewhere every producer would look dead to its sender): on any other system
``Engine()`` raises one clear error before it creates anything, and ``engine serve`` runs."""

import glob
import subprocess
import sys
import tempfile
import textwrap

from engine.server import serve_subprocess

_PROGRAM = textwrap.dedent(
    """
    import os, sys
    sys.platform = sys.argv[2]
    import engine
    print("pid", os.getpid())
    try:
        engine.Engine(sys.argv[1], project="e/p")
    except engine.EngineError as exc:
        print("refused:", exc)
    else:
        print("started")
    """
)


def _run(url: str, platform: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _PROGRAM, url, platform], capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def test_engine_refuses_clearly_on_a_system_other_than_linux(tmp_path):
    with serve_subprocess(tmp_path / "t.db") as url:  # the server itself needs no Linux
        result = _run(url, "darwin")
        assert result.returncode == 0, result.stderr
        pid, said = result.stdout.splitlines()
        assert said.startswith("refused: the engine runs on Linux; this system is 'darwin'"), said
        assert "Traceback" not in result.stderr and not result.stderr, result.stderr
        # nothing made: no ring set (its segment and folder are named by the engine's pid)
        assert not glob.glob(f"/dev/shm/engine-rings-{pid.split()[1]}-*")
        assert not glob.glob(f"{tempfile.gettempdir()}/engine-rings-{pid.split()[1]}-*")
        result = _run(url, "linux")  # the same program on Linux starts as usual
        assert result.stdout.splitlines()[1] == "started", result.stdout + result.stderr


def test_the_commands_that_run_an_engine_refuse_in_one_line_elsewhere(tmp_path):
    # urllib.request imports macOS's _scproxy when it is first imported on darwin: before
    program = ("import sys, urllib.request; sys.platform = 'darwin'; from engine.cli import main; "
               "sys.exit(main(sys.argv[1:]))")
    (tmp_path / "calls.jsonl").write_text("")
    for argv in (["demo"], ["ingest", str(tmp_path / "calls.jsonl"), "--to", "http://127.0.0.1:9", "--project", "e/p"],
                 ["relay", "--upstream", "http://127.0.0.1:9"], ["replay", "--to", "http://127.0.0.1:9"]):  # fmt: skip
        result = subprocess.run([sys.executable, "-c", program, *argv], capture_output=True,
                                text=True, timeout=60)  # fmt: skip
        assert result.returncode == 1, (argv, result.stderr)
        assert result.stderr.startswith("engine: error: the engine runs on Linux; this system "
                                        "is 'darwin'"), (argv, result.stderr)  # fmt: skip
        assert result.stderr.count("\n") == 1, result.stderr
