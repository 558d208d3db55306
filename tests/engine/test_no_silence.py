"""No silent failure: a wrong URL path is said at start and flush() is False; a server that
is down is reported (what, since when, how many items wait, where they go); flush() is
True only for what the server acknowledged. Each case runs a real owner process whose
sender's log lines are read from its stderr."""

import re
import subprocess
import sys
import textwrap

import pytest

from engine.server import serve_subprocess
from tests.pipeline import bare_env

pytestmark = pytest.mark.integration

_OWNER = textwrap.dedent("""
    import json, sys
    from engine.producer._engine import Engine
    from tests.engine.helpers import trace_calls
    settings = json.loads(sys.argv[2])
    with Engine(url=sys.argv[1], project="ops/silence", **settings) as eng:
        trace_calls(eng.producer(), 5)
        flushed = eng.flush(timeout_s=30)
        stats = eng.stats()
        print(json.dumps({"flushed": flushed, "acked": stats["items_acked"],
                          "dead": stats["dead_letters"], "spooled": stats["spooled_items"]}))
""")


def _owner(url: str, tmp_path, **settings) -> tuple[dict, str]:
    import json

    settings = {"dead_letter_path": str(tmp_path / "dead.jsonl"), "backoff_initial_ms": 10,
                "backoff_max_ms": 100, "shutdown_timeout_s": 5.0, **settings}
    result = subprocess.run([sys.executable, "-c", _OWNER, url, json.dumps(settings)],
                            capture_output=True, text=True, timeout=120,
                            env=bare_env())
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1]), result.stderr


def test_wrong_url_path_is_said_at_start_and_flush_is_false(tmp_path):
    with serve_subprocess(tmp_path / "t.db") as url:
        outcome, log = _owner(url + "/api", tmp_path)
    # 5 calls of 2: after the 404 on calls/complete the sender tries starts and ends (upsert)
    assert outcome["flushed"] is False and outcome["acked"] == 0 and outcome["dead"] == 20
    assert "/api/server_info answered 404" in log and "wrong path?" in log


def test_server_down_is_reported_and_spooled_is_not_delivered(tmp_path):
    outcome, log = _owner("http://127.0.0.1:9", tmp_path, delivery_deadline_s=1.0,
                          spool_dir=str(tmp_path / "spool"))
    assert outcome == {"flushed": False, "acked": 0, "dead": 0, "spooled": 10}
    assert "cannot reach the trace server yet" in log
    warning = next(line for line in log.splitlines() if "failing since" in line)
    assert "server http://127.0.0.1:9 failing since" in warning and "items waiting" in warning
    assert f"goes to the spool {tmp_path / 'spool'}" in warning


def test_flush_is_true_when_everything_was_acknowledged(tmp_path):
    with serve_subprocess(tmp_path / "t.db") as url:
        outcome, log = _owner(url, tmp_path)
    assert outcome == {"flushed": True, "acked": 10, "dead": 0, "spooled": 0}
    assert "failing since" not in log and "404" not in log


_WAITING_OWNER = textwrap.dedent("""
    import sys, time
    from engine.producer._engine import Engine
    with Engine(url=sys.argv[1], project="ops/silence", shutdown_timeout_s=5.0) as eng:
        print(eng._sender.pid, flush=True)
        sys.stdin.readline()
        if eng._sender is not None:
            print(eng._sender.pid, flush=True)
""")


def _waiting_owner(url: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _WAITING_OWNER, url], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=bare_env())


def test_a_killed_sender_is_reported_as_killed_and_restarted(tmp_path):
    import os
    import signal
    import time

    with serve_subprocess(tmp_path / "t.db") as url:
        owner = _waiting_owner(url)
        first = int(owner.stdout.readline())
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _child_pids(owner.pid) in ([], [first]):
            time.sleep(0.05)  # polling for the restarted sender, with a deadline
        time.sleep(0.5)  # its "restarted it as" line follows the start by microseconds
        _, err = owner.communicate("\n", timeout=60)
    assert f"sender process {first} was killed by SIGKILL" in err
    assert "restarted it as" in err and "exited with -9" not in err


def test_a_group_sigterm_is_not_reported_as_a_restart(tmp_path):
    import os
    import signal

    with serve_subprocess(tmp_path / "t.db") as url:
        owner = _waiting_owner(url)
        owner.stdout.readline()
        os.killpg(owner.pid, signal.SIGTERM)  # the owner's own group: it and its sender
        _, err = owner.communicate(timeout=60)
    assert "restart" not in err, err


def _child_pids(pid: int) -> list[int]:
    """Children of every thread of ``pid`` (the restarted sender is the watchdog thread's:
    reading the main thread's list alone, the test waited out its 30 s deadline)."""
    import glob

    children = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(path) as f:
                children += [int(p) for p in f.read().split()]
        except FileNotFoundError:
            continue
    return sorted(children)


def test_a_tracers_flush_is_false_when_an_item_was_dead_lettered(tmp_path):
    from engine.sender._deadletter import read_dead_letters
    from tests.engine.helpers import PROJECT, make_engine, trace_calls
    from tests.faultserver import FaultServer

    with FaultServer() as server, make_engine(server.url, tmp_path) as eng:
        tracer = eng.producer()
        trace_calls(tracer, 5)
        assert tracer.flush(timeout_s=30)
        with tracer.call("poison") as bad:
            server.reject_ids = frozenset({bad.id})  # before its start or end can be sent
        good = trace_calls(tracer, 5)
        assert not tracer.flush(timeout_s=30)  # settled, but one item was dead-lettered
        assert tracer.flush(timeout_s=30)  # nothing more went elsewhere since
        assert set(good) <= server.stored_ids(PROJECT)
        first_bad = bad.id
        with tracer.call("poison-again") as bad:
            server.reject_ids = frozenset({bad.id})
        assert tracer.settle(timeout_s=30)  # released, dead-lettered: settled all the same
        # each poison call is dead-lettered as one item, or as its start (sent ahead while
        # its end was pending) and its end: which, depends on timing
        letters = list(read_dead_letters(tmp_path / "dead_letters.jsonl"))
        assert {letter.call_id for letter in letters} == {first_bad, bad.id}
        assert eng.stats()["dead_letters"] == len(letters)


def test_a_log_level_the_sender_would_fail_on_is_refused_when_the_engine_starts(tmp_path,
                                                                              monkeypatch):
    """The sender set its logging from ENGINE_LOG_LEVEL and died on a typo, was restarted,
    died again: nothing delivered. Engine() now says it; a sender given one anyway (an
    older owner's) logs at its default level."""
    from engine.common import _logging
    from engine.common._errors import ConfigError
    from engine.producer._engine import Engine

    monkeypatch.setenv("ENGINE_LOG_LEVEL", "verbose")
    with pytest.raises(ConfigError, match="ENGINE_LOG_LEVEL='verbose' is not one of debug"):
        Engine(url="http://127.0.0.1:9", project="ops/silence",
               dead_letter_path=str(tmp_path / "dead.jsonl"))
    assert _logging.level_from_env() == "WARNING"
    monkeypatch.setenv("ENGINE_LOG_LEVEL", "Info")
    assert _logging.level_from_env() == "INFO"


@pytest.mark.parametrize("source", ["config file", "argument", "url"])
def test_a_refused_key_is_named_by_where_it_came_from(tmp_path, source):
    """The sender's start-up line said "set ENGINE_API_KEY or WANDB_API_KEY" whatever the
    key's source; now it names the source (never the key), as the CLI's own check does."""
    keys = tmp_path / "keys"
    keys.write_text("granted-key-0123456789 rw ops/*\n")
    keys.chmod(0o600)
    wrong = "wrong-key-0123456789"
    settings, said = {}, ""
    with serve_subprocess(tmp_path / "t.db", keys_file=keys) as url:
        if source == "config file":
            config = tmp_path / "engine.toml"
            config.write_text(f'[engine]\napi_key = "{wrong}"\n')
            config.chmod(0o600)
            settings, said = {"config_file": str(config)}, f"refused the API key from api_key in {config}"
        elif source == "argument":
            settings, said = {"api_key": wrong}, "refused the API key from the api_key given to Engine()"
        else:
            url = url.replace("http://", f"http://api:{wrong}@")
            said = "refused the key in the URL (HTTP 401)"
        outcome, log = _owner(url, tmp_path, **settings)
    assert outcome["acked"] == 0 and said in log and "ENGINE_API_KEY" not in log
    assert wrong not in log


_REFUSED_OWNER = textwrap.dedent("""
    import json, sys
    from engine.producer._engine import Engine
    from tests.engine.helpers import trace_calls
    settings = json.loads(sys.argv[2])
    with Engine(url=sys.argv[1], project="ops/silence", **settings) as eng:
        for _ in range(12):  # a batch each: flush() sends what the ring holds
            trace_calls(eng.producer(), 5)
            eng.flush(timeout_s=30)
        stats = eng.stats()
        print(json.dumps({"acked": stats["items_acked"], "dead": stats["dead_letters"]}))
""")


def test_a_server_refusing_every_batch_is_one_line_and_a_sum_at_exit(tmp_path):
    """A wrong key through a long eval logged one line per refused batch (thousands an
    hour); now the first batch of a reason is said, then what went the same way once a
    minute and at exit, before the exit line. Every item is still in the dead letters."""
    import json

    keys = tmp_path / "keys"
    keys.write_text("granted-key-0123456789 rw ops/*\n")
    keys.chmod(0o600)
    settings = {"dead_letter_path": str(tmp_path / "dead.jsonl"), "api_key": "wrong-key-0123456789",
                "shutdown_timeout_s": 5.0}
    with serve_subprocess(tmp_path / "t.db", keys_file=keys) as url:
        result = subprocess.run([sys.executable, "-c", _REFUSED_OWNER, url, json.dumps(settings)],
                                capture_output=True, text=True, timeout=120,
                                env=bare_env())
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.splitlines()[-1])
    assert outcome == {"acked": 0, "dead": 12 * 5 * 2}
    lines = [line for line in result.stderr.splitlines() if re.search(r"dead-lettered \d", line)]
    assert len(lines) == 2, result.stderr
    first = int(lines[0].split("dead-lettered ")[1].split()[0])
    assert lines[0].endswith("(http, HTTP 401): invalid API key")
    assert f"dead-lettered {120 - first} items in " in lines[1] and "batches in the last" in lines[1]
    assert result.stderr.index(lines[1]) < result.stderr.index("0 items delivered to")
    assert len((tmp_path / "dead.jsonl").read_text().splitlines()) == 120
