"""Every command the README and docs/ show runs, against real processes on loopback.

Commands are read from the Markdown itself (inline code and fenced blocks), so a command
added to the docs is run here too, or fails this test until it is taught how. Placeholders
(URL, PORT, FILE, DIR, PID, e/p, N, COPY) are filled with real things made for the run; a bare
command name in the prose (`engine replay`) is run as ``engine replay --help``; a server
command runs until it says it listens, then gets SIGINT and must exit 0; every other command
must exit 0 within its bound. Not run: ``scripts/test`` (this suite), the benchmarks
(``scripts/bench``, ``python -m bench…``: minutes long; bench/ has its own tests), and
``engine serve --store clickhouse://…`` deployment examples (they name a ClickHouse host
and bind all interfaces; tests/server's ClickHouse tests run that store on loopback).
"""

import contextlib
import os
import re
import select
import shlex
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import msgspec
import pytest
import trustme

from engine.sender._deadletter import DeadLetters
from engine.server import serve_subprocess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMANDS = ("serve", "demo", "relay", "ingest", "replay", "stats", "calls", "copy", "backup",
            "doctor")
NOT_RUN = ("scripts/test", "scripts/bench", "python -m bench")
PROJECT = "docs/test"
BOUND_S = 240


def shown_commands() -> list[str]:
    """``engine …`` and ``scripts/…`` commands in the docs, each once, in order of appearance."""
    found: dict[str, None] = {}
    for path in DOCS:
        text = path.read_text()
        blocks = re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.S)
        lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
        spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
        for candidate in [*lines, *spans]:
            if re.match(rf"engine( --help| --version| ({'|'.join(COMMANDS)})\b)", candidate) \
                    or re.match(r"scripts/[a-z]", candidate):
                found.setdefault(candidate.replace("\\|", "|"), None)
    return [c for c in found if not c.startswith(NOT_RUN) and "clickhouse://" not in c]


def concrete(command: str, things: dict[str, str]) -> list[str]:
    """The command with optional parts taken, alternatives' first choice, placeholders filled."""
    command = re.sub(r"\[([^\]|]*)\|[^\]]*\]", r"\1", command)  # [a | b] -> a
    command = command.replace("[settings]", "").replace("[", "").replace("]", "")
    command = command.replace("FILE...", "FILE")
    argv = shlex.split(command)
    if len(argv) == 2 and argv[1] in COMMANDS:  # the command's name, not a command line
        argv.append("--help")
    out = []
    for i, word in enumerate(argv):
        before = argv[i - 1] if i else ""
        if word == "FILE":
            word = {"--dead-letters": things["dead_letters"],
                    "--db": things["served_db"]}.get(before, things["ingest_file"])
        elif word == "COPY":  # a backup's destination: a new file each time
            word = os.path.join(things["tmp"], f"copy-{uuid.uuid4().hex}.db")
        elif word == "DIR":
            word = things["ring_dir"] if before == "--ring-dir" else things["spool_dir"]
        elif word in ("CERT", "KEY"):  # engine serve --tls-cert CERT --tls-key KEY
            word = things["tls_" + word.lower()]
        elif word == "F":
            word = things["keys_file"] if before == "--keys-file" else things["db"]
        elif word in ("PORT", "P"):
            word = "0"
        elif word == "127.0.0.1:PORT":
            word = "127.0.0.1:0"
        elif word.startswith("chdb:///"):
            word = f"chdb://{things['chdb_dir']}"
        out.append({"URL": things["url"], "THAT_URL": things["url"], "PID": things["pid"],
                    "OTHER_URL": things["other_url"],
                    "e/p": PROJECT, "N": "2"}.get(word, word))
    if out[:2] == ["engine", "serve"] and "--port" not in out:
        out += ["--port", "0"]  # not 6345: other runs on this machine may hold it
    if out[:2] == ["engine", "stats"] and "--once" in out:
        out += ["--interval-s", "0.1"]
    if out[:2] == ["engine", "calls"] and "--project" not in out:
        out += ["--project", PROJECT]
    return [sys.executable, "-m", "engine", *out[1:]] if out[0] == "engine" else out


def _runs_until_stopped(argv: list[str]) -> bool:
    name = argv[3] if len(argv) > 3 else ""
    if "--help" in argv:
        return False
    return name in ("serve", "relay") or (name == "stats" and "--once" not in argv) \
        or "--follow" in argv


def _stop_after_start(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env, cwd=ROOT, start_new_session=True) as proc:
        try:
            # the readiness line of a server; a live view's first drawing
            ready, _, _ = select.select([proc.stdout], [], [], 60)
            line = proc.stdout.readline() if ready else ""
            assert line, f"{' '.join(argv)} printed nothing within 60 s"
            if argv[3] in ("serve", "relay"):
                assert "listening on" in line, line
            proc.send_signal(signal.SIGINT)
            code = proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return code, proc.stdout.read()


@pytest.fixture(scope="module")
def things(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("docs")
    ingest_file = tmp / "calls.jsonl"
    ingest_file.write_bytes(b"".join(msgspec.json.encode(_complete(i)) + b"\n" for i in range(5)))
    dead = tmp / "dead.jsonl"
    (tmp / "spool").mkdir()
    keys_file = tmp / "keys"
    keys_file.write_text("docs-key rw *\n")
    keys_file.chmod(0o600)
    issued = trustme.CA().issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(tmp / "cert.pem"))
    issued.private_key_pem.write_to_path(str(tmp / "key.pem"))
    (tmp / "key.pem").chmod(0o600)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("ENGINE_", "WANDB_", "WF_"))},
           "XDG_DATA_HOME": str(tmp / "data"), "XDG_STATE_HOME": str(tmp / "state")}
    # commands shown without a URL mean the local server: here, the one started for the run
    with serve_subprocess(tmp / "served.db") as url, _owner(url) as (pid, ring_dir), \
            serve_subprocess(tmp / "other.db") as other_url:
        env["ENGINE_URL"] = url
        yield {"url": url, "other_url": other_url, "db": str(tmp / "cli.db"), "ingest_file": str(ingest_file),
               "served_db": str(tmp / "served.db"), "tmp": str(tmp),
               "dead_letters": str(dead), "spool_dir": str(tmp / "spool"), "env": env,
               "chdb_dir": str(tmp / "chdb"), "pid": str(pid), "ring_dir": ring_dir,
               "keys_file": str(keys_file), "tls_cert": str(tmp / "cert.pem"),
               "tls_key": str(tmp / "key.pem")}


_OWNER = (f"import os, sys\nfrom engine.producer._engine import Engine\n"
          f"with Engine(url=sys.argv[1], project={PROJECT!r}, start_sender=False) as eng:\n"
          f"    print(os.path.dirname(eng.spec.lock_path), flush=True)\n"
          f"    sys.stdin.readline()\n")


@contextlib.contextmanager
def _owner(url: str):
    """A process holding one engine open: the PID / ring directory of `engine stats`."""
    with subprocess.Popen([sys.executable, "-c", _OWNER, url], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as proc:
        try:
            yield proc.pid, proc.stdout.readline().strip()
        finally:
            proc.communicate("\n", timeout=60)


def _dead_letters(path: str) -> None:
    """A dead-letter file as the sender writes it (a replay that delivers it removes it)."""
    with DeadLetters(path) as letters:
        letters.add(reason="dead_deadline", status=None, call_id="x", project=PROJECT,
                    route=f"/v2/{PROJECT}/calls/complete",
                    item_json=msgspec.json.encode(_complete(9)))


def _complete(i: int) -> dict:
    return {"project_id": PROJECT, "id": f"0190a0b0-0000-7000-8000-{i:012d}",
            "trace_id": f"0190a0b0-0000-7000-9000-{i:012d}", "op_name": "docs.op",
            "started_at": "2025-01-01T00:00:00Z", "ended_at": "2025-01-01T00:00:01Z",
            "attributes": {}, "inputs": {"i": i}, "summary": {}}


def test_the_docs_show_the_commands_this_test_runs():
    shown = shown_commands()
    assert "scripts/demo" in shown and "engine serve" in shown
    assert {c.split()[1] for c in shown if c.startswith("engine ")} >= set(COMMANDS)


@pytest.mark.parametrize("command", shown_commands())
def test_every_command_in_the_docs_runs(command, things):
    argv = concrete(command, things)
    if "--dead-letters" in argv:
        _dead_letters(things["dead_letters"])
    if _runs_until_stopped(argv):
        code, output = _stop_after_start(argv, things["env"])
    else:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=BOUND_S,
                                env=things["env"], cwd=ROOT, stdin=subprocess.DEVNULL)
        code, output = result.returncode, result.stdout + result.stderr
    assert code == 0, f"{' '.join(argv)} -> {code}\n{output[-2000:]}"


def test_the_readme_example_runs(things):
    readme = (ROOT / "README.md").read_text()
    (code,) = re.findall(r"## Use it\n\n```python\n(.*?)```", readme, re.S)
    code = code.replace("http://127.0.0.1:6345", things["url"])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=BOUND_S, env=things["env"], cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "'items_acked': 4" in result.stdout, result.stdout  # evaluate + 3 predicts
