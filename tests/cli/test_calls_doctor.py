"""``engine calls`` (list, filter, follow) and ``engine doctor`` against a real ``engine serve``."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from aiohttp import web

from engine.producer._engine import Engine
from engine.server import serve_subprocess
from tests.client.stub import StubServer
from tests.faultserver import FaultServer
from tests.server.harness import complete

PROJECT = "ops/calls"
pytestmark = pytest.mark.integration


def _env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ENGINE_", "WANDB_"))}
    return {**base, **extra}


def _engine(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *argv], capture_output=True, text=True,
                          timeout=60, env=env or _env(), stdin=subprocess.DEVNULL)


def _trace(url: str, first: int, count: int) -> None:
    with Engine(url=url, project=PROJECT) as eng:
        tracer = eng.producer()
        for i in range(first, first + count):
            try:
                with tracer.call("predict" if i % 2 else "score", inputs={"i": i}) as call:
                    call.summary = {"usage": {"m": {"prompt_tokens": 10, "completion_tokens": i}}}
                    if i % 5 == 4:
                        raise ValueError(f"bad example {i}")
                    call.output = i
            except ValueError:
                pass
        assert eng.flush(timeout_s=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serve_subprocess(tmp_path_factory.mktemp("calls") / "t.db") as url:
        _trace(url, 0, 10)
        yield url


def test_calls_lists_the_latest_oldest_first(server):
    result = _engine("calls", "--project", PROJECT, "--url", server, "--limit", "4")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    assert [line.split()[-2] for line in lines] == ["score", "predict", "score", "predict"]
    assert "success" in lines[0] and " ms " in lines[0] and "16 tok" in lines[0]  # call 6
    assert "error" in lines[-1]  # call 9 raised


def test_calls_json_and_filters(server):
    result = _engine("calls", "--project", PROJECT, "--url", server, "--json", "--limit", "100",
                     "--op", "PRED", "--status", "error")
    assert result.returncode == 0, result.stderr
    calls = [json.loads(line) for line in result.stdout.splitlines()]
    assert [c["inputs"]["i"] for c in calls] == [9]
    assert calls[0]["op_name"] == "predict" and "bad example 9" in calls[0]["exception"]


def test_calls_follow_prints_new_calls_as_they_arrive(server):
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "calls", "--project", PROJECT, "--url", server,
         "--follow", "--interval-s", "0.2", "--limit", "1", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        first = json.loads(proc.stdout.readline())
        _trace(server, 100, 3)
        seen = [json.loads(proc.stdout.readline())["inputs"]["i"] for _ in range(3)]
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
        proc.stdout.close()
        proc.stderr.close()
    assert first["inputs"]["i"] == 9
    assert sorted(seen) == [100, 101, 102]
    assert code == 0


def _follow(url: str, project: str) -> tuple[subprocess.Popen, list[str], threading.Thread]:
    """``engine calls --follow --json`` and the lines it prints, gathered by a thread."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "calls", "--project", project, "--url", url,
         "--follow", "--interval-s", "0.2", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    return proc, lines, reader


def _wait_lines(lines: list[str], count: int, deadline_s: float = 10) -> None:
    deadline = time.monotonic() + deadline_s
    while len(lines) < count and time.monotonic() < deadline:
        time.sleep(0.05)


def _end_follow(proc: subprocess.Popen, reader: threading.Thread) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    code = proc.wait(30)
    reader.join(30)
    err = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    return code, err


def test_calls_follow_prints_every_call_of_a_burst_larger_than_one_poll_reads(server):
    """1,200 calls stored between two polls: each is printed once, oldest first. Before, a
    poll read the newest 500 and the rest were never printed, without a word (a team's
    pipelines writing 1,500 calls/s into one project: 12,500 of 40,000 printed)."""
    project = "ops/burst"
    proc, lines, reader = _follow(server, project)
    try:
        assert "no calls in ops/burst yet; following" in proc.stderr.readline()
        batch = [complete(f"burst-{i:04d}", project_id=project, t_s=i, op_name="predict")
                 for i in range(1200)]
        request = urllib.request.Request(f"{server}/v2/{project}/calls/complete",
                                         data=json.dumps({"batch": batch}).encode())
        urllib.request.urlopen(request, timeout=30).read()
        _wait_lines(lines, 1200)
    finally:
        code, err = _end_follow(proc, reader)
    ids = [json.loads(line)["id"] for line in lines]
    assert ids == [f"burst-{i:04d}" for i in range(1200)], (len(ids), ids[:3], err)
    assert code == 0, err


def _store(url: str, project: str, ids_and_times: list[tuple[str, int]]) -> None:
    batch = [complete(call_id, project_id=project, t_s=t_s, op_name="predict")
             for call_id, t_s in ids_and_times]
    request = urllib.request.Request(f"{url}/v2/{project}/calls/complete",
                                     data=json.dumps({"batch": batch}).encode())
    urllib.request.urlopen(request, timeout=30).read()


@pytest.mark.parametrize("tied", [False, True])
def test_calls_follow_pages_a_burst_in_as_many_windows_while_calls_keep_arriving(server, tied):
    """600 calls stored before each window of a poll after its first (a ClickHouse store
    under a team's load answers a window of 500 in ~1 s while 1,500 calls/s arrive): the
    windows went back by offset, so each call stored meanwhile pushed the next window one
    call later; arriving faster than the windows were read, they never reached a call seen
    before: a poll read window after window up to its 20,000-call cap, printing nothing
    meanwhile (the team load on ClickHouse: 0 of 40,000 calls printed in 30 s). A window
    now reads the calls that started no later than the oldest one read so far: the burst
    of 1,200 takes 3 windows however many arrive, also when all 1,200 started at once."""
    from collections import OrderedDict

    from engine.cli import _calls

    project = f"ops/chase-{tied}"
    _store(server, project, [("seen-0", 0)])  # printed by the poll before

    class Writing(_calls.CallReader):
        windows = 0

        def newest(self, limit, query, offset=0):
            if self.windows and self.windows <= 6:  # stored while the poll pages back
                first = 10_000 + 600 * self.windows
                _store(server, project, [(f"late-{k:05d}", k) for k in range(first, first + 600)])
            self.windows += 1
            return super().newest(limit, query, offset)

    reader = Writing(server, project, None)
    seen = OrderedDict((c["id"], _calls.status_of(c)) for c in reader.newest(500, None))
    assert list(seen) == ["seen-0"]
    burst = [(f"burst-{i:04d}", 10 if tied else 10 + i) for i in range(1200)]
    _store(server, project, burst)  # between two polls
    reader.windows = 0
    calls = _calls._new_since_last_poll(reader, None, seen)
    ids = [c["id"] for c in calls]
    printed = [i for i in ids if i.startswith("burst-")]
    assert (sorted(printed) if tied else printed) == [b for b, _ in (burst if tied else reversed(burst))]
    assert len(ids) == len(set(ids))
    assert reader.windows == 2, (reader.windows, len(ids))  # 500, then 1,000


def test_calls_follow_reads_a_large_burst_in_growing_windows(server):
    """6,000 calls between two polls: read in windows of 500, 1,000, 2,000 and 4,000 (4
    requests), not 13 of 500. A window costs ``engine serve`` over ClickHouse a fixed
    ~100-150 ms beside ~110 us per 4 KB call, so windows of 500 read ~2,000 calls/s idle
    and ~700/s under the team load (3 engines, 1,500 calls/s each): following team/w1
    fell further behind each poll, and printed 13,100 of its 40,000 calls."""
    from collections import OrderedDict

    from engine.cli import _calls

    project = "ops/large-burst"
    _store(server, project, [("seen-0", 0)])

    class Counting(_calls.CallReader):
        sizes: list[int] = []

        def newest(self, limit, query, offset=0):
            self.sizes.append(limit)
            return super().newest(limit, query, offset)

    reader = Counting(server, project, None)
    seen = OrderedDict((c["id"], _calls.status_of(c)) for c in reader.newest(500, None))
    _store(server, project, [(f"burst-{i:04d}", 10 + i) for i in range(6000)])
    reader.sizes.clear()
    calls = _calls._new_since_last_poll(reader, None, seen)
    assert [c["id"] for c in calls] == [f"burst-{i:04d}" for i in reversed(range(6000))] + ["seen-0"]
    assert reader.sizes == [500, 1000, 2000, 4000]


@pytest.mark.parametrize("follow", [True, False])
def test_ctrl_c_right_after_the_first_line_ends_a_follow_as_at_any_other_time(server, monkeypatch,
                                                                               follow):
    """Ctrl-C landing as ``engine calls --follow`` printed its first line (Python checks for
    signals as that call returns) ended it "interrupted" (130) instead of 0: the line was
    printed before the block that ends a follow quietly (the docs-commands test, SIGINT sent
    once the first line is read: 2 of 2 runs after the ClickHouse tests). Here the
    interrupt is raised as that line is printed; a listing (no --follow) cut short stays 130."""
    from engine.cli import _calls, main

    def print_then_ctrl_c(*args, **kwargs):
        print(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(_calls, "print", print_then_ctrl_c, raising=False)
    monkeypatch.delenv("ENGINE_API_KEY", raising=False)
    argv = ["calls", "--project", "ops/empty", "--url", server] + (["--follow"] if follow else [])
    assert main(argv) == (0 if follow else 130)


def test_calls_follow_outlives_a_server_restart_and_says_so(tmp_path):
    """It ended at the first poll the restarting server did not answer (exit 1)."""
    with serve_subprocess(tmp_path / "t.db") as url:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "calls", "--project", PROJECT, "--url", url,
             "--follow", "--interval-s", "0.1", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        assert "no calls in ops/calls yet; following" in proc.stderr.readline()
    try:
        assert "polling until it answers again" in proc.stderr.readline()
        port = url.rsplit(":", 1)[1]
        with serve_subprocess(tmp_path / "t.db", flags=("--port", port)) as again:
            assert again == url
            assert proc.stderr.readline().strip() == "engine calls: the server answers again"
            _trace(url, 200, 1)
            assert json.loads(proc.stdout.readline())["inputs"]["i"] == 200
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
        proc.stdout.close()
        proc.stderr.close()
    assert code == 0


@pytest.mark.parametrize("status", [502, 503])
def test_calls_follow_outlives_a_proxy_or_a_stopping_server_answering_5xx(status):
    """A restart seen through a reverse proxy is a 502 (nginx while engine serve is down);
    a server that is stopping answers 503 on a connection kept alive. Both ended the
    follow at once (exit 1, "answered HTTP 502"), where a refused connection is waited out."""
    answer = {"now": "calls"}
    call = {"id": "after", "op_name": "predict", "started_at": "2026-01-01T00:00:00Z",
            "ended_at": "2026-01-01T00:00:01Z"}

    async def proxy(request: web.Request) -> web.Response:
        if request.path == "/server_info":
            return web.json_response({})
        if answer["now"] == "down":
            return web.Response(status=status, text="<html>Bad Gateway</html>")
        shown = [call] if answer["now"] == "back" else []
        return web.Response(body=b"".join(json.dumps(c).encode() + b"\n" for c in shown))

    with StubServer(proxy) as stub:
        proc, lines, reader = _follow(stub.url, PROJECT)
        try:
            assert "following" in proc.stderr.readline()
            answer["now"] = "down"
            said = proc.stderr.readline()
            answer["now"] = "back"
            _wait_lines(lines, 1)
        finally:
            code, err = _end_follow(proc, reader)
    assert f"answered HTTP {status}" in said and "polling until it answers again" in said, said
    assert "the server answers again" in err, err
    assert [json.loads(line)["id"] for line in lines] == ["after"]
    assert code == 0, err


def test_an_answer_cut_short_is_a_server_out_of_reach_not_a_traceback():
    """A server stopping mid-answer (a stream cancelled at its shutdown timeout) cut the
    body short: ``http.client.IncompleteRead`` went past ``_probe.request`` and ended a
    follow with a traceback; it is now ``Unreachable``, which a follow waits out."""
    from engine.cli import _probe

    listener = socket.create_server(("127.0.0.1", 0))

    def answer_half() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"id\": ")

    server = threading.Thread(target=answer_half)
    server.start()
    try:
        with pytest.raises(_probe.Unreachable, match="cut short"):
            _probe.post_json(f"http://127.0.0.1:{listener.getsockname()[1]}/calls/stream_query", {})
    finally:
        server.join(10)
        listener.close()


@pytest.mark.parametrize("command", [["calls", "--project", PROJECT, "--url"], ["doctor"]])
def test_a_reader_that_stops_early_ends_the_command_quietly(server, command):
    """``engine calls ... | head -1``: once the reader is gone, exit 141 (128 + SIGPIPE, as
    a shell tool) and nothing on stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "engine", *command, server],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            stdin=subprocess.DEVNULL)  # fmt: skip
    proc.stdout.close()  # the reader is gone before the first line
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141 and err == "", (proc.returncode, err)


def test_doctor_says_ready_for_engine_serve(server):
    result = _engine("doctor", server, "--limit-mib", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    for check in ("reachable", "auth", "ingest routes", "store", "compression", "size limit",
                  "shared memory", "weave integration"):
        assert f"ok   {check}:" in result.stdout
    assert "weave 0.54.0: ENGINE_WEAVE=1 sends its calls through the engine" in result.stdout
    assert "ok   store: /ready: the server's store (sqlite) answers" in result.stdout
    assert "the server runs on this machine" in result.stdout  # why "auto" sends plain bodies
    assert result.stdout.splitlines()[-1].endswith("READY: the engine can deliver here")


def test_doctor_says_what_the_spool_of_the_server_holds(server, tmp_path, monkeypatch):
    """The engines' default spool for this server (what an outage left: the next engine
    toward it sends it): read, not changed; nothing kept is ok, calls kept a warning."""
    from engine.common._config import default_spool_dir
    from engine.sender._spool import Spool

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    env = _env(XDG_STATE_HOME=str(tmp_path))
    folder = default_spool_dir(server)
    empty = _engine("doctor", server, "--limit-mib", "2", env=env)
    assert f"ok   spool: nothing kept for this server ({folder})" in empty.stdout, empty.stdout
    assert not folder.exists()  # the doctor makes nothing
    Spool(folder).put(f"/v2/{PROJECT}/calls/complete", b'{"batch": [{}, {}, {}]}', 3)
    kept = _engine("doctor", server, "--limit-mib", "2", env=env)
    off = _engine("doctor", server, "--limit-mib", "2", env=_env(XDG_STATE_HOME=str(tmp_path),
                                                                 ENGINE_SPOOL_DIR="off"))
    assert kept.returncode == 0, kept.stdout  # a warning: delivery works
    assert f"warn spool: {folder} holds 3 items (" in kept.stdout, kept.stdout
    assert f"`engine replay --to {server}`" in kept.stdout
    assert Spool(folder).count_pending == 1
    assert 'ok   spool: off (spool_dir = "off")' in off.stdout, off.stdout
    assert "MiB more before disk_keep_free_bytes (1,024 MiB;" in kept.stdout, kept.stdout
    # a disk down to its reserve: an outage would park calls in the rings, said before it comes
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    Spool(folder).done(Spool(folder).pending()[0])
    full = _engine("doctor", server, "--limit-mib", "2", env=_env(
        XDG_STATE_HOME=str(tmp_path), ENGINE_DISK_KEEP_FREE_BYTES=str(free + (1 << 30))))
    assert full.returncode == 0, full.stdout
    assert f"warn spool: nothing kept for this server ({folder}), but it has no room left " \
           "before disk_keep_free_bytes" in full.stdout, full.stdout


def test_doctor_reports_a_missing_key_a_small_limit_and_a_wrong_path(tmp_path):
    with serve_subprocess(tmp_path / "k.db", api_key="doctor-key",
                          max_body_bytes=1536 * 1024) as url:
        no_key = _engine("doctor", url, "--limit-mib", "2")
        with_key = _engine("doctor", url, "--limit-mib", "2", env=_env(ENGINE_API_KEY="doctor-key"))
        wrong_path = _engine("doctor", url + "/traces", env=_env(ENGINE_API_KEY="doctor-key"))
    assert no_key.returncode == 1 and "FAIL auth: HTTP 401" in no_key.stdout
    assert "NOT READY" in no_key.stdout and "doctor-key" not in no_key.stdout
    assert with_key.returncode == 0, with_key.stdout
    assert "warn size limit: 2 MiB answered 413; 1 MiB went through" in with_key.stdout
    assert wrong_path.returncode == 1 and "wrong path" in wrong_path.stdout


def test_doctor_checks_a_key_granted_some_projects_against_the_one_named(tmp_path):
    """The ingest probe passed on a 403 ('may not run insert_calls across projects': the
    server refused any empty batch under a key); a key for team-a/* failed 'auth'."""
    keys = tmp_path / "keys"
    keys.write_text("key-a-0123456789abcdef rw team-a/*\n")
    keys.chmod(0o600)
    env = _env(ENGINE_API_KEY="key-a-0123456789abcdef")
    with serve_subprocess(tmp_path / "k.db", keys_file=keys) as url:
        unnamed = _engine("doctor", url, "--limit-mib", "1", env=env)
        granted = _engine("doctor", url, "--limit-mib", "1", "--project", "team-a/evals", env=env)
        other = _engine("doctor", url, "--limit-mib", "1", "--project", "team-b/evals", env=env)
    assert unnamed.returncode == 0, unnamed.stdout
    assert "warn ingest routes: calls/complete refused the key for engine-doctor/doctor" in unnamed.stdout
    assert "run with --project ENTITY/PROJECT" in unnamed.stdout and "FAIL" not in unnamed.stdout
    assert granted.returncode == 0 and "warn" not in granted.stdout.split("shared memory")[0]
    assert "ok   ingest routes: calls/complete answers (HTTP 200)" in granted.stdout
    assert other.returncode == 1
    assert "FAIL ingest routes: calls/complete refused the key for team-b/evals (HTTP 403: " \
           "project_id: this API key (keys line 1) may not write project 'team-b/evals')" in other.stdout
    assert "0123456789abcdef" not in unnamed.stdout + granted.stdout + other.stdout
    # a refused probe tells nothing of compression or the size limit (before: "zstd
    # accepted (HTTP 403)", "requests of 1 MiB are read whole")
    # a refused probe tells nothing of compression (before: "zstd accepted (HTTP 403)")
    for result, project in ((unnamed, "engine-doctor/doctor"), (other, "team-b/evals")):
        assert f"warn compression: could not tell: the server refused the probe for {project} " \
               "(HTTP 403: project_id: this API key" in result.stdout, result.stdout
    assert "accepted (HTTP 403)" not in unnamed.stdout + other.stdout
    assert "warn compression" not in granted.stdout


def test_doctor_cannot_tell_compression_or_the_size_limit_from_refused_probes():
    """A gateway that refuses the key before it reads a body: before, "zstd accepted (HTTP
    403)" and "requests of 1 MiB are read whole (no 413)"."""
    async def refusing(request: web.Request) -> web.Response:
        if request.path == "/server_info":
            return web.json_response({"accepts_encodings": ["zstd"]})
        return web.json_response({"reason": "key not granted this project"}, status=403)

    with StubServer(refusing) as stub:
        result = _engine("doctor", stub.url, "--limit-mib", "1", "--project", "team-b/evals",
                         env=_env(ENGINE_API_KEY="key-0123456789"))
    for check in ("compression", "size limit"):
        assert f"warn {check}: could not tell: the server refused the probe for team-b/evals " \
               "(HTTP 403: key not granted this project)" in result.stdout, result.stdout
    assert "accepted" not in result.stdout and "read whole" not in result.stdout


def test_credentials_in_the_url_are_sent_as_the_key_and_never_shown(tmp_path):
    # before: urllib took "api:KEY@127.0.0.1" for a host name: "cannot reach
    # http://api:KEY@…: unknown host", the key on screen
    with serve_subprocess(tmp_path / "k.db", api_key="url-key-0123456789") as url:
        good = url.replace("http://", "http://api:url-key-0123456789@")
        wrong = url.replace("http://", "http://api:wrong-key-0123456789@")
        doctor = _engine("doctor", good, "--limit-mib", "1")
        calls = _engine("calls", "--project", PROJECT, "--url", good)
        refused = _engine("calls", "--project", PROJECT, "--url", wrong)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert doctor.stdout.splitlines()[-1].startswith("engine doctor: http://***@127.0.0.1:")
    assert calls.returncode == 0, calls.stderr
    assert refused.returncode == 1 and "refused the key in the URL (HTTP 401)" in refused.stderr
    shown = doctor.stdout + doctor.stderr + calls.stdout + calls.stderr + refused.stderr
    assert "key-0123456789" not in shown


def test_a_refused_key_from_the_config_file_is_named_as_such(tmp_path):
    # before: "set ENGINE_API_KEY or WANDB_API_KEY", as if no key had been given
    config = tmp_path / "engine.toml"
    config.write_text('[engine]\napi_key = "file-key-0123456789"\n')
    config.chmod(0o600)
    with serve_subprocess(tmp_path / "k.db", api_key="url-key-0123456789") as url:
        refused = _engine("calls", "--project", PROJECT, "--url", url,
                          env=_env(ENGINE_CONFIG=str(config)))
        config.chmod(0o644)
        open_file = _engine("calls", "--project", PROJECT, "--url", url,
                            env=_env(ENGINE_CONFIG=str(config)))
    assert refused.returncode == 1
    assert f"refused the API key from api_key in {config} (HTTP 401)" in refused.stderr
    assert open_file.returncode == 2 and f"chmod 600 {config}" in open_file.stderr
    assert "file-key" not in refused.stderr + open_file.stderr


def test_doctor_on_a_trace_server_without_ready_does_not_check_its_store():
    """Another trace server (here the ingest-only FaultServer) has no /ready: not a failure."""
    with FaultServer() as fault:
        result = _engine("doctor", fault.url, "--limit-mib", "1")
    assert "ok   store: no /ready here (not engine serve): its store is not checked" in result.stdout
    assert "FAIL store" not in result.stdout


def test_doctor_says_what_a_distant_server_bounds():
    """A server answering 250 ms late: each producer's ring is in flight once per trip."""
    with FaultServer(stall_s=0.25) as fault:
        far = _engine("doctor", fault.url, "--limit-mib", "1")
        larger = _engine("doctor", fault.url, "--limit-mib", "1",
                         env=_env(ENGINE_RING_BYTES=str(64 << 20)))
    line = next(x for x in far.stdout.splitlines() if "round trip:" in x)
    assert line.startswith("  warn round trip: an empty ingest request answered in 2")
    assert "ring (16 MiB)" in line and "calls/s of 4 KB" in line and "ring_bytes" in line
    assert far.returncode == 0, far.stdout  # it delivers, only slower: a warning
    # a 64 MiB ring carries ~65k calls/s per producer at that distance: no warning
    assert "  ok   round trip: an empty ingest request answered in 2" in larger.stdout
