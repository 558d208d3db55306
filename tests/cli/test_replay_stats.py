"""``engine replay`` (spool segments, dead letters) and ``engine stats`` (a running engine)."""

import os
import subprocess
import sys

import msgspec
import pytest

from engine.cli._stats import live_ring_dirs
from engine.producer._engine import Engine
from engine.sender._deadletter import DeadLetters, read_dead_letters
from engine.sender._spool import Spool
from tests.faultserver import FaultServer

PROJECT = "ent/replay"
ROUTE = f"/v2/{PROJECT}/calls/complete"


def _complete(i: int, note: str | None = None) -> bytes:
    return msgspec.json.encode({
        "project_id": PROJECT, "id": f"0190a0b0-0000-7000-8000-{i:012d}",
        "trace_id": f"0190a0b0-0000-7000-9000-{i:012d}", "op_name": "op",
        "started_at": "2025-01-01T00:00:00Z", "ended_at": "2025-01-01T00:00:01Z",
        "attributes": {}, "inputs": {} if note is None else {"note": note}, "summary": {},
    })  # fmt: skip


def _replay(url: str, *flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", "replay", "--to", url, *flags],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def _letters(path, *numbers: int) -> None:
    with DeadLetters(path) as letters:
        for i in numbers:
            letters.add(reason="shutdown", status=None, call_id=f"c{i}", route=ROUTE,
                        project=PROJECT, item_json=_complete(i))


def _ids(*numbers: int) -> set[str]:
    return {f"0190a0b0-0000-7000-8000-{i:012d}" for i in numbers}


def test_a_dead_letter_file_not_written_yet_beside_a_spool_is_one_line_and_the_spool_goes(
        tmp_path):
    """An engine writes its dead-letter file at its first letter: a scheduled
    ``engine replay --dead-letters F --spool D`` exited 2 ("no such file") while none had been
    written, and the spool was not replayed. Now that is one line and the spool goes; with
    no spool, or a folder that does not exist, a path naming nothing is still an error."""
    spool = Spool(tmp_path / "spool")
    spool.put(ROUTE, b'{"batch":[' + b",".join(_complete(i) for i in range(3)) + b"]}", 3)
    absent = tmp_path / "dead.jsonl"
    with FaultServer() as server:
        result = _replay(server.url, "--spool", str(tmp_path / "spool"), "--dead-letters",
                         str(absent))
        assert result.returncode == 0, result.stderr
        assert f"no dead letters at {absent}" in result.stderr
        assert server.stored_ids(PROJECT) == _ids(0, 1, 2)
        assert Spool(tmp_path / "spool").pending() == []
        alone = _replay(server.url, "--dead-letters", str(absent))
        assert alone.returncode == 2 and "no such file" in alone.stderr, alone.stderr
        elsewhere = _replay(server.url, "--spool", str(tmp_path / "spool"), "--dead-letters",
                            str(tmp_path / "nope" / "dead.jsonl"))
        assert elsewhere.returncode == 2 and "no such file" in elsewhere.stderr
    assert not absent.exists()


def test_replay_sends_zstd_bodies_where_the_server_takes_them_and_plain_ones_elsewhere(
        tmp_path):
    """``engine replay`` compresses as the engines do (``compression = "auto"``: zstd where
    ``/server_info`` advertises it and the server runs on another machine): before, every
    replay went plain, several times the bytes across the link just after an outage."""
    dead = tmp_path / "dead.jsonl"
    letters = {i: _complete(i, note="the same words again and again " * 40) for i in range(300)}
    for server_args, encoding in (({}, "zstd"), ({"accepts_encodings": ()}, None)):
        with DeadLetters(dead) as file:
            for i, item in letters.items():
                file.add(reason="shutdown", status=None, call_id=f"c{i}", route=ROUTE,
                         project=PROJECT, item_json=item)
        with FaultServer(**server_args) as server:
            result = _replay(server.url, "--dead-letters", str(dead))
            assert result.returncode == 0, result.stderr
            assert server.stored_ids(PROJECT) == _ids(*letters)
            posts = server.records(ROUTE)
        assert {r.headers.get("Content-Encoding") for r in posts} == {encoding}, result.stdout
        sent = sum(r.wire_bytes for r in posts)
        raw = sum(map(len, letters.values()))
        if encoding:
            assert sent * 5 < raw and ", zstd)" in result.stdout, (sent, raw, result.stdout)
        else:
            assert sent > raw and ", zstd" not in result.stdout, (sent, raw, result.stdout)


def test_replay_delivers_spool_and_dead_letters_and_keeps_only_failures(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.put(ROUTE, b'{"batch":[' + b",".join(_complete(i) for i in range(3)) + b"]}", 3)
    dead = tmp_path / "dead.jsonl"
    with DeadLetters(dead) as letters:
        for i in (10, 11):
            letters.add(reason="dead_deadline", status=None, call_id=f"c{i}", route=ROUTE,
                        project=PROJECT, item_json=_complete(i))
    rejected = "0190a0b0-0000-7000-8000-000000000011"
    with FaultServer(seed=3, reject_ids=[rejected]) as server:
        result = _replay(server.url, "--spool", str(tmp_path / "spool"), "--dead-letters", str(dead))
        assert result.returncode == 1, result.stderr  # one letter was rejected again
        assert len(server.stored_ids(PROJECT)) == 4 and rejected not in server.stored_ids()
    assert Spool(tmp_path / "spool").pending() == []
    assert [letter.call_id for letter in read_dead_letters(dead)] == ["c11"]
    assert os.stat(dead).st_mode & 0o777 == 0o600


def test_replay_keeps_a_letter_that_is_not_json_without_sending_it_and_says_so(tmp_path):
    dead = tmp_path / "dead.jsonl"
    bad = _complete(21).replace(b'"inputs":{}', b'"inputs":{"0":NaN}')
    with DeadLetters(dead) as letters:
        letters.add_batch(reason="400", status=400, route=ROUTE, items=[
            ("c20", PROJECT, _complete(20)), ("c21", PROJECT, bad)])
    (tmp_path / "spool").mkdir()
    with FaultServer(seed=3) as server:
        result = _replay(server.url, "--spool", str(tmp_path / "spool"), "--dead-letters", str(dead))
        assert result.returncode == 1, result.stderr
        assert server.stored_ids(PROJECT) == {"0190a0b0-0000-7000-8000-000000000020"}
        assert len(server.records(ROUTE)) == 1  # the invalid one was never sent
    assert "1 dead letters hold an item that is not JSON" in result.stdout
    (kept,) = read_dead_letters(dead)
    assert kept.call_id == "c21" and kept.item_invalid and kept.item_json == bad


def _claim_in_a_process_that_ends(path) -> str:
    """What a replay stopped half-way (Ctrl-C) leaves: the file, claimed by a dead process."""
    return subprocess.run([sys.executable, "-c", "import sys; from engine.sender._deadletter "
                           "import claim; print(claim(sys.argv[1]))", str(path)],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_replay_of_a_named_file_a_stopped_replay_claimed_sends_what_it_claimed(tmp_path):
    dead = tmp_path / "dead.jsonl"
    with DeadLetters(dead) as letters:
        letters.add(reason="shutdown", status=None, call_id="c30", route=ROUTE,
                    project=PROJECT, item_json=_complete(30))
    claimed = _claim_in_a_process_that_ends(dead)
    assert not dead.exists() and os.path.exists(claimed)
    with FaultServer(seed=3) as server:
        result = _replay(server.url, "--dead-letters", str(dead))
        assert result.returncode == 0, result.stderr
        assert server.stored_ids(PROJECT) == {"0190a0b0-0000-7000-8000-000000000030"}
    assert "1 items delivered" in result.stdout
    assert not os.path.exists(claimed) and not dead.exists()


@pytest.mark.parametrize("how", ["--config", "ENGINE_CONFIG"])
def test_replay_sends_the_dead_letters_and_spool_the_config_file_names(tmp_path, how):
    _letters(tmp_path / "configured.jsonl", 40)
    Spool(tmp_path / "spool").put(ROUTE, b'{"batch":[' + _complete(41) + b"]}", 1)
    config = tmp_path / "engine.toml"
    config.write_text(f'[engine]\ndead_letter_path = "{tmp_path / "configured.jsonl"}"\n'
                      f'spool_dir = "{tmp_path / "spool"}"\n')
    flags, env = (["--config", str(config)], {}) if how == "--config" else ([], {how: str(config)})
    with FaultServer(seed=3) as server:
        result = _replay(server.url, *flags, env=env)
        assert result.returncode == 0, result.stderr
        assert server.stored_ids(PROJECT) == _ids(40, 41)
    assert "2 items delivered" in result.stdout and str(tmp_path / "configured.jsonl") in result.stdout
    assert not (tmp_path / "configured.jsonl").exists() and Spool(tmp_path / "spool").pending() == []


def test_replay_flags_win_over_the_config_file(tmp_path):
    _letters(tmp_path / "configured.jsonl", 50)
    _letters(tmp_path / "named.jsonl", 51)
    config = tmp_path / "engine.toml"
    config.write_text(f'[engine]\ndead_letter_path = "{tmp_path / "configured.jsonl"}"\n')
    with FaultServer(seed=3) as server:
        result = _replay(server.url, "--config", str(config), "--dead-letters",
                         str(tmp_path / "named.jsonl"))
        assert result.returncode == 0, result.stderr
        assert server.stored_ids(PROJECT) == _ids(51)
    assert (tmp_path / "configured.jsonl").exists()


def test_replay_refuses_a_file_that_is_not_a_dead_letter_file_and_leaves_it(tmp_path):
    calls = tmp_path / "calls.jsonl"  # what `engine ingest` reads: calls, not dead letters
    calls.write_bytes(b"".join(_complete(i) + b"\n" for i in range(3)))
    with FaultServer(seed=3) as server:
        result = _replay(server.url, "--dead-letters", str(calls))
        assert server.records(ROUTE) == []
    assert result.returncode == 2, result.stderr
    assert f"{calls} is not a dead-letter file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert calls.read_bytes() == b"".join(_complete(i) + b"\n" for i in range(3))
    assert os.listdir(tmp_path) == ["calls.jsonl"]


def test_replay_counts_lines_that_are_not_dead_letters_and_says_where_they_went(tmp_path):
    dead = tmp_path / "dead.jsonl"
    _letters(dead, 60)
    with open(dead, "ab") as file:
        file.write(_complete(61) + b"\n")  # a call, not a dead letter
    _letters(dead, 62)
    with FaultServer(seed=3) as server:
        result = _replay(server.url, "--dead-letters", str(dead))
        assert server.stored_ids(PROJECT) == _ids(60, 62)
    assert result.returncode == 1, result.stderr
    assert f"1 lines that are not dead letters moved to {dead}.malformed" in result.stdout
    assert (tmp_path / "dead.jsonl.malformed").read_bytes() == _complete(61) + b"\n"


def test_stats_finds_the_running_engine_and_prints_its_line():
    with Engine(url="http://127.0.0.1:9", project="a/b", start_sender=False) as engine:
        ring_dir = os.path.dirname(engine.spec.lock_path)
        assert (os.getpid(), ring_dir) in live_ring_dirs()
        result = subprocess.run(
            [sys.executable, "-m", "engine", "stats", "--ring-dir", ring_dir, "--once",
             "--interval-s", "0.05"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "acked 0 items" in result.stdout and "drops: none" in result.stdout
    assert ring_dir not in [d for _, d in live_ring_dirs()]


def test_stats_for_a_pid_without_an_engine_says_so():
    result = subprocess.run([sys.executable, "-m", "engine", "stats", "--once", "--pid", "1"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "no running engine found for pid 1" in result.stderr


def test_a_letter_the_server_answers_500_alone_is_kept_and_the_others_are_delivered(tmp_path):
    """weave's server answers 500 to a call it fails on. The replay took the first 500 for
    the server stopping and kept that batch and every letter behind it: one such call held
    the whole file back, replay after replay. Now the batch is cut in halves until the call
    is found; it is kept (and said), the others delivered. A server answering 500 to
    everything is still an outage: a bounded number of tries, everything kept."""
    dead = tmp_path / "dead.jsonl"
    _letters(dead, *range(200))
    poison = "0190a0b0-0000-7000-8000-000000000007"
    with FaultServer(reject_ids=[poison], reject_status=500) as server:
        result = _replay(server.url, "--dead-letters", str(dead))
        assert result.returncode == 1, result.stderr
        assert server.stored_ids(PROJECT) == _ids(*range(200)) - {poison}  # before: none
        assert "the server answered 500 to 1 items alone" in result.stderr, result.stderr
    assert [letter.call_id for letter in read_dead_letters(dead)] == ["c7"]
    _letters(dead, *range(300, 400))
    with FaultServer(p_500=1.0) as broken:
        result = _replay(broken.url, "--dead-letters", str(dead))
        assert result.returncode == 1 and not broken.stored_ids()
        posts = [r for r in broken.requests if r.method == "POST"]
        assert len(posts) <= 4 + 32, len(posts)  # the first piece retried 3 times, halves once
        assert "answered 500 to" not in result.stderr
    assert len(list(read_dead_letters(dead))) == 101
