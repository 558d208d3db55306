"""``engine serve --store clickhouse://…`` while its ClickHouse server is down (restarted,
upgraded, a network fault) or out of disk space: every request answers 503 (507 for the
disk) with the reason and ``Retry-After`` (the client keeps its calls and retries), the log
says it once instead of a traceback per request, and once ClickHouse is back (or has room)
every call is stored, once.

Real processes: a local ClickHouse server (chDB behind ClickHouse's HTTP interface) of the
test's own -- stopped and started again on the same folder and port, or on a small tmpfs
in a mount namespace of its own (root) that a file fills; ``engine serve`` as a
subprocess; the engine's own client.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import os
import signal
import subprocess
import sys
import time

import pytest

import engine
from engine.server.clickhouse._process import (
    LocalClickHouse,
    local_clickhouse,
    start_local_clickhouse,
)
from tests.server.clickhouse_fixtures import PASSWORD as SESSION_PASSWORD
from tests.server.clickhouse_proxy import clickhouse_proxy
from tests.server.serve_process import (
    NEEDS_MOUNT,
    can_mount,
    complete_call,
    free_port,
    get,
    post,
    stop,
    stored_ids,
    wait_health,
)

pytestmark = pytest.mark.integration
PROJECT = "ent/clickhouse-outage"
PASSWORD = "outage-test-password"
_MOUNT = "/tmp/engine-test-clickhouse-full"


def _env(password: str = PASSWORD) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    env["ENGINE_CLICKHOUSE_PASSWORD"] = password
    return env


def _serve(store: str, port: int, password: str = PASSWORD, *args: str,
           **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "engine", "serve", "--store", store,
                             "--port", str(port), *args],
                            env={**_env(password), **env}, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _serve_on(clickhouse: LocalClickHouse, database: str) -> tuple[str, subprocess.Popen]:
    """``engine serve`` on ``database`` of ``clickhouse``, answering: (its URL, the process)."""
    return _serve_store(clickhouse.store_url(database))


def _serve_store(store: str, password: str = PASSWORD, *args: str,
                 **env: str) -> tuple[str, subprocess.Popen]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = _serve(store, port, password, *args, **env)
    try:
        wait_health(url, server)
    except BaseException:
        stop(server)
        raise
    return url, server


def _store_one(url: str, text: str) -> dict:
    """One call, stored (200) while the store is well: what the test checks later."""
    call = complete_call(PROJECT, 0, text)
    assert post(url, f"/v2/{PROJECT}/calls/complete", {"batch": [call]})[0] == 200
    return call


def _refused_at_start(store: str, **env: str) -> tuple[str, str]:
    """``engine serve --store store`` exiting 1 at start: (its error line, its stderr)."""
    done = subprocess.run([sys.executable, "-m", "engine", "serve", "--store", store,
                           "--port", "0"],
                          env={**_env(), **env}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done
    line = next(ln for ln in done.stderr.splitlines() if ln.startswith("engine: error:"))
    assert "unexpected" not in line and "Traceback" not in done.stderr, done.stderr
    return line, done.stderr


def _waiting_calls(url: str, first: int) -> tuple[engine.Engine, list[dict]]:
    """An engine holding 200 calls the store cannot take yet (they wait, retried)."""
    eng = engine.Engine(url=url, project=PROJECT, linger_ms=5, delivery_deadline_s=120)
    tracer = eng.producer()
    waiting = [complete_call(PROJECT, first + i, "sent while the store cannot take it")
               for i in range(200)]
    for call in waiting:
        tracer.call_complete(call)
    assert not eng.flush(3)  # nothing lands yet
    return eng, waiting


def _all_stored_once(eng: engine.Engine, url: str, calls: list[dict]) -> None:
    """The waiting calls land (retried, none dead-lettered); ``calls`` are stored, once each."""
    assert eng.flush(60)
    stats = eng.close()
    assert stats["dead_letters"] == 0 and stats["retries"] > 0
    ids = stored_ids(url, PROJECT)
    assert {c["id"] for c in calls} <= set(ids) and len(ids) == len(set(ids)) == len(calls)


def _stopped(eng: engine.Engine | None, server: subprocess.Popen,
             clickhouse: LocalClickHouse) -> str:
    """Everything the test started, stopped; serve's log, which holds no traceback."""
    if eng is not None:
        eng.close()
    err = stop(server)
    clickhouse.stop()
    assert "Traceback" not in err, err[-3000:]
    return err


def test_a_clickhouse_outage_answers_503_with_a_reason_and_every_call_lands_once_it_is_back(
        tmp_path):
    folder = tmp_path / "clickhouse"
    clickhouse = start_local_clickhouse(folder, PASSWORD)
    url, server = _serve_on(clickhouse, "outage")
    eng = None
    try:
        before = _store_one(url, "stored before the outage")

        clickhouse.stop()
        for i in range(3):  # every request, a write and a read, the same answer
            status, answer, headers = post(url, f"/v2/{PROJECT}/calls/complete",
                                           {"batch": [complete_call(PROJECT, i, "refused")]})
            assert status == 503, (status, answer)
            assert "ClickHouse server cannot be reached" in answer["reason"], answer
            assert f":{clickhouse.port}/outage" in answer["reason"]  # where, never the password
            assert PASSWORD not in answer["reason"] and headers.get("Retry-After") == "5"
        status, answer, _ = post(url, "/calls/query_stats", {"project_id": PROJECT})
        assert status == 503 and "cannot be reached" in answer["reason"]
        assert get(url, "/health")[0] == 200  # this process lives: liveness holds
        stats = get(url, "/stats")[1]  # counted apart from requests refused for their content
        assert stats["store_unavailable"] == 4 and stats["rejected_requests"] == 0, stats
        status, answer = get(url, "/ready")  # a load balancer takes it out of rotation
        assert status == 503 and "cannot be reached" in answer["reason"], answer
        doctor = subprocess.run([sys.executable, "-m", "engine", "doctor", url, "--limit-mib", "1"],
                                env=_env(), capture_output=True, text=True, timeout=120)
        assert doctor.returncode == 1, doctor.stdout + doctor.stderr
        assert "FAIL store: /ready answered HTTP 503: the store's ClickHouse server cannot be " \
               "reached" in doctor.stdout, doctor.stdout

        eng, waiting = _waiting_calls(url, 1000)  # the engine's client: its calls wait
        clickhouse = start_local_clickhouse(folder, PASSWORD, port=clickhouse.port)  # back
        assert get(url, "/ready") == (200, {"status": "ready", "store": "clickhouse"})
        _all_stored_once(eng, url, [before, *waiting])
    finally:
        err = _stopped(eng, server, clickhouse)
    # said once, not per request (the retention pass, 5 s after the start, may meet the
    # outage too and says so in its own line)
    said = [line for line in err.splitlines() if "cannot be reached" in line
            and "past their retention" not in line]  # fmt: skip
    assert len(said) == 1, err[-3000:]
    assert "Http Driver" not in err, err[-3000:]  # nor clickhouse-connect's line per request


def test_serve_on_an_unreachable_clickhouse_says_so_and_exits_1():
    store = f"clickhouse://default@127.0.0.1:{free_port()}/nothing_listens"
    line, stderr = _refused_at_start(store)
    assert "the store's ClickHouse server cannot be reached" in line and store[13:] in line, line
    assert PASSWORD not in stderr and stderr.strip() == line, stderr  # that line alone


def test_a_proxy_answering_502_while_clickhouse_restarts_answers_503_with_a_reason(
        clickhouse_server):
    """nginx or an ingress before ClickHouse answers 502 while its upstream is down: the
    same as ClickHouse out of reach, not a 500 and a traceback per request."""
    with clickhouse_proxy(clickhouse_server.port) as proxy:
        url, server = _serve_store(proxy.store_url("behind_a_proxy"), SESSION_PASSWORD)
        try:
            _store_one(url, "stored before the upstream went down")
            proxy.mode = "502"
            for i in range(3):
                status, answer, headers = post(url, f"/v2/{PROJECT}/calls/complete",
                                               {"batch": [complete_call(PROJECT, i, "refused")]})
                assert status == 503 and headers.get("Retry-After") == "5", (status, answer)
                assert "ClickHouse server cannot be reached" in answer["reason"], answer
            status, answer = get(url, "/ready")
            assert status == 503 and "cannot be reached" in answer["reason"], answer
        finally:
            err = stop(server)
    assert "Traceback" not in err, err[-3000:]
    assert err.count("cannot be reached") == 1, err[-3000:]


def test_serve_behind_a_proxy_answering_502_says_clickhouse_cannot_be_reached_at_start(
        clickhouse_server):
    with clickhouse_proxy(clickhouse_server.port, "502") as proxy:
        line, _ = _refused_at_start(proxy.store_url("x"))
    assert "unexpected" not in line and "the store's ClickHouse server cannot be reached" in line, line


_SHORT_PING = {"ENGINE_CLICKHOUSE_PING_TIMEOUT_S": "1"}


def test_ready_answers_503_within_its_timeout_while_clickhouse_never_answers(
        clickhouse_server):
    """A ClickHouse that takes connections and answers nothing (stopped, wedged): /ready
    says so within its own short timeout, however many probes come at once (they do not
    wait on the store's threads, held by statements for minutes)."""
    with clickhouse_proxy(clickhouse_server.port) as proxy:
        url, server = _serve_store(proxy.store_url("wedged"), SESSION_PASSWORD, **_SHORT_PING)
        try:
            _store_one(url, "stored before ClickHouse wedged")
            proxy.mode = "hang"
            with concurrent.futures.ThreadPoolExecutor(6) as probes:
                answers = list(probes.map(lambda _: get(url, "/ready"), range(6)))
            for status, answer in answers:
                assert status == 503 and "cannot be reached" in answer["reason"], answer
                assert "did not answer within 1 s" in answer["reason"], answer
        finally:
            stop(server)


def test_a_write_to_a_wedged_clickhouse_answers_503_within_the_statement_timeout_and_lands_once_it_heals(
        clickhouse_server):
    """Writes and reads wait ``$ENGINE_CLICKHOUSE_STATEMENT_TIMEOUT_S`` for a ClickHouse
    that takes connections and answers nothing, not clickhouse-connect's 300 s: 503 with
    why, so the sender keeps its calls and sends them again once the link heals."""
    with clickhouse_proxy(clickhouse_server.port) as proxy:
        url, server = _serve_store(proxy.store_url("wedged_writes"), SESSION_PASSWORD,
                                   ENGINE_CLICKHOUSE_STATEMENT_TIMEOUT_S="1")
        eng = None
        try:
            before = _store_one(url, "stored before ClickHouse wedged")
            proxy.mode = "hang"
            eng = engine.Engine(url=url, project=PROJECT, linger_ms=5, delivery_deadline_s=120)
            tracer = eng.producer()
            waiting = [complete_call(PROJECT, 1000 + i, "sent while ClickHouse is wedged")
                       for i in range(20)]
            for call in waiting:  # the sender's request waits on ClickHouse with these
                tracer.call_complete(call)
            with concurrent.futures.ThreadPoolExecutor(2) as client:
                write = client.submit(post, url, f"/v2/{PROJECT}/calls/complete",
                                      {"batch": [complete_call(PROJECT, 1, "wedged")]})
                read = client.submit(post, url, "/calls/query_stats", {"project_id": PROJECT})
                answers = [write.result(60), read.result(60)]
            for status, answer, headers in answers:
                assert status == 503 and headers.get("Retry-After") == "5", (status, answer)
                assert "cannot be reached: it did not answer within 1 s" in answer["reason"]
                assert "ENGINE_CLICKHOUSE_STATEMENT_TIMEOUT_S" in answer["reason"], answer
            deadline = time.monotonic() + 30  # the sender too heard a 503 and keeps the calls
            while eng.stats()["retries"] == 0:
                assert time.monotonic() < deadline, "the sender's request was never answered"
                time.sleep(0.05)
            proxy.mode = "forward"  # the link heals
            proxy.released.set()  # the requests it held close unanswered
            _all_stored_once(eng, url, [before, *waiting])
        finally:
            if eng is not None:
                eng.close()
            err = stop(server)
    assert "Traceback" not in err, err[-3000:]


def test_serve_stops_within_its_shutdown_timeout_while_a_request_waits_on_a_wedged_clickhouse(
        clickhouse_server):
    with clickhouse_proxy(clickhouse_server.port) as proxy:
        url, server = _serve_store(proxy.store_url("wedged_stop"), SESSION_PASSWORD,
                                   "--shutdown-timeout-s", "1")
        with concurrent.futures.ThreadPoolExecutor(1) as client:
            try:
                proxy.mode = "hang"
                waiting = client.submit(post, url, f"/v2/{PROJECT}/calls/complete",
                                        {"batch": [complete_call(PROJECT, 0, "wedged")]})
                assert proxy.arrived.wait(30)  # its insert waits on ClickHouse
                server.send_signal(signal.SIGTERM)
                out, err = server.communicate(timeout=60)  # not the statement timeout (30 s)
            finally:
                stop(server)
            with contextlib.suppress(OSError):  # cancelled: the connection closes unanswered
                waiting.result(60)
    assert server.returncode == 0 and "engine serve: stopped" in out, err[-3000:]
    assert "still unanswered" in err and "Traceback" not in err, err[-3000:]


def test_serve_stops_without_waiting_for_a_retention_delete_nobody_awaits(clickhouse_server):
    """A SIGTERM while a retention pass's lightweight DELETE runs (~2 s on the team load's
    database, passes every 4 s there) held the stop 2 s more (CLOSE_WAIT_S) for a statement
    whose answer nobody waits for (the next pass deletes the same calls): 2.5-5 s stops
    instead of ~1, and with two replicas on one ClickHouse the restarted one was out 6.5-7
    s, past the 5 s after which the engines, their rings full, dead-lettered 20-30k calls.
    The retention's statements now run on a thread of their own that the stop leaves."""
    from engine.server.clickhouse._store import CLOSE_WAIT_S

    with clickhouse_proxy(clickhouse_server.port, "hang_delete") as proxy:
        url, server = _serve_store(proxy.store_url("retention_stop"), SESSION_PASSWORD,
                                   "--retention-interval-s", "0.2")
        try:
            old = complete_call(PROJECT, 0, "three days old")
            old["started_at"] = old["ended_at"] = "2020-01-01T00:00:00Z"
            assert post(url, f"/v2/{PROJECT}/calls/complete", {"batch": [old]})[0] == 200
            assert post(url, "/project/ttl_settings/update",
                        {"project_id": PROJECT, "retention_days": 1})[0] == 200
            assert proxy.arrived.wait(30)  # the pass's DELETE waits on ClickHouse
            began = time.monotonic()
            server.send_signal(signal.SIGTERM)
            out, err = server.communicate(timeout=60)
            took_s = time.monotonic() - began
        finally:
            stop(server)
    assert server.returncode == 0 and "engine serve: stopped" in out, err[-3000:]
    assert "still unanswered" not in err and "Traceback" not in err, err[-3000:]
    assert took_s < CLOSE_WAIT_S, took_s


def test_serve_on_a_clickhouse_that_never_answers_says_so_within_the_ping_timeout(
        clickhouse_server):
    with clickhouse_proxy(clickhouse_server.port, "hang") as proxy:
        line, _ = _refused_at_start(proxy.store_url("wedged_start"), **_SHORT_PING)
    assert "the store's ClickHouse server did not answer within 1 s" in line, line
    assert "ENGINE_CLICKHOUSE_PING_TIMEOUT_S" in line, line


def _fill(folder: str) -> str:
    """Fill the filesystem of ``folder`` to the last byte; the filler's path."""
    filler = os.path.join(folder, "filler")
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    for size in (1 << 16, 1 << 12, 1):  # the tail of the last chunk too
        with open(filler, "ab", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler


@pytest.mark.skipif(not can_mount(), reason=NEEDS_MOUNT)
def test_a_full_clickhouse_disk_answers_507_with_a_reason_and_every_call_lands_once_room_is_made():
    ch_port = free_port()
    script = (f"mkdir -p {_MOUNT} && mount -t tmpfs -o size=64m tmpfs {_MOUNT} && "
              f"exec {sys.executable} -m engine.server.clickhouse.local_server "
              f"--path {_MOUNT}/ch --host 127.0.0.1 --port {ch_port}")
    proc = subprocess.Popen(["unshare", "-m", "sh", "-c", script], text=True,
                            stdout=subprocess.PIPE, env=_env())
    for line in proc.stdout:  # its readiness line comes first (EOF if it failed)
        if "listening on" in line:
            break
    clickhouse = LocalClickHouse(proc, "127.0.0.1", ch_port, PASSWORD)
    assert proc.poll() is None, "the local ClickHouse did not start"
    url, server = _serve_on(clickhouse, "full")
    eng = None
    try:
        before = _store_one(url, "stored before the disk filled")

        filler = _fill(f"/proc/{proc.pid}/root{_MOUNT}")  # its namespace's tmpfs, full
        status, answer, headers = post(url, f"/v2/{PROJECT}/calls/complete",
                                       {"batch": [complete_call(PROJECT, 1, "x" * 20_000)]})
        assert status == 507, (status, answer)
        assert "the store's disk is full (ClickHouse" in answer["reason"], answer
        assert f":{ch_port}/full" in answer["reason"] and PASSWORD not in answer["reason"]
        assert headers.get("Retry-After") == "5"
        stats = get(url, "/stats")[1]
        assert stats["store_full"] == 1 and stats["rejected_requests"] == 0, stats

        eng, waiting = _waiting_calls(url, 1000)
        os.unlink(filler)  # room, as an operator makes it
        _all_stored_once(eng, url, [before, *waiting])
    finally:
        err = _stopped(eng, server, clickhouse)
    assert err.count("the store's disk is full") == 1, err[-3000:]  # said once, not per request


def test_serve_with_a_wrong_clickhouse_password_says_which_settings_to_check(tmp_path):
    with local_clickhouse(tmp_path / "clickhouse", PASSWORD) as clickhouse:
        line, stderr = _refused_at_start(clickhouse.store_url("x"),
                                         ENGINE_CLICKHOUSE_PASSWORD="not-the-password")
    assert "ClickHouse refused user 'default'" in line and "$ENGINE_CLICKHOUSE_PASSWORD" in line
    assert "not-the-password" not in stderr


def test_a_clickhouse_password_changed_under_serve_answers_503_naming_the_refused_user(
        tmp_path):
    folder = tmp_path / "clickhouse"
    clickhouse = start_local_clickhouse(folder, PASSWORD)
    url, server = _serve_on(clickhouse, "rotated")
    try:
        _store_one(url, "before")
        clickhouse.stop()  # the password is rotated on the ClickHouse side only
        clickhouse = start_local_clickhouse(folder, "rotated-password", port=clickhouse.port)
        status, answer, headers = post(url, f"/v2/{PROJECT}/calls/complete",
                                       {"batch": [complete_call(PROJECT, 1, "refused")]})
        assert status == 503 and headers.get("Retry-After") == "5", (status, answer)
        assert "the store's ClickHouse refused user 'default'" in answer["reason"], answer
        assert PASSWORD not in answer["reason"] and "rotated-password" not in answer["reason"]
        assert get(url, "/ready")[0] == 503
    finally:
        err = _stopped(None, server, clickhouse)
    assert err.count("refused user") == 1, err[-3000:]


def test_serve_on_an_embedded_clickhouse_folder_it_cannot_create_says_so():
    line, _ = _refused_at_start("chdb:///proc/no-such-folder")
    assert "cannot open the embedded ClickHouse (chdb) at /proc/no-such-folder" in line, line
