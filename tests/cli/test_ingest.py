"""``engine ingest``: every call in the files stored once, compressed input, resuming."""

import base64
import datetime as dt
import os
import random
import subprocess
import sys
import urllib.request

import msgspec
import pytest
import zstandard

from engine.cli._ingest_plan import Checkpoint, file_signature, plan_shards, save_checkpoint
from engine.cli._ingest_read import parse_line
from engine.native._accel import native
from engine.server import serve_subprocess

pytestmark = pytest.mark.integration
PROJECT = "ent/ingest"
T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)


def _call_id(i: int) -> str:
    return f"0190a0b0-0000-7000-8000-{i:012d}"


def trace_lines(n_calls: int, seed: int = 1, invalid: bool = True) -> list[bytes]:
    """``n_calls`` calls: about a third as start+end pairs, the rest complete (with or
    without ``"mode"``), after a blank line and (``invalid``) an invalid line (line 2) that
    ingest must skip."""
    rng = random.Random(seed)
    lines = [b"", b'{"mode": "start", "oops": 1}'] if invalid else [b""]
    for i in range(n_calls):
        base = {"project_id": PROJECT, "id": _call_id(i), "trace_id": _call_id(i),
                "op_name": "predict", "started_at": T0.isoformat(),
                "attributes": {}, "inputs": {"i": i}}
        end = {"ended_at": T0.isoformat(), "output": i, "summary": {}}
        kind = rng.choice(("pair", "bare", "complete"))
        if kind == "pair":
            lines.append(msgspec.json.encode({"mode": "start", **base}))
            lines.append(msgspec.json.encode({"mode": "end", "project_id": PROJECT, "id": _call_id(i), **end}))
        elif kind == "bare":
            lines.append(msgspec.json.encode({**base, **end}))
        else:
            lines.append(msgspec.json.encode({"mode": "complete", **base, **end}))
    return lines


def _write(path, lines: list[bytes]) -> None:
    path.write_bytes(b"\n".join(lines) + b"\n")


def _get_json(url: str, body: dict | None = None):
    data = None if body is None else msgspec.json.encode(body)
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    with urllib.request.urlopen(request, timeout=60) as resp:
        return resp.read()


def _stored_ids(url: str) -> list[str]:
    lines = _get_json(url + "/calls/stream_query", {"project_id": PROJECT}).splitlines()
    return [msgspec.json.decode(line)["id"] for line in lines]


def _ingest(url: str, *files, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "engine", "ingest", *map(str, files), "--to", url,
            "--no-progress", "--linger-ms", "5", *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=110)


def test_parse_line_reads_every_mode_and_rejects_bad_lines():
    lines = trace_lines(30)
    assert parse_line(lines[0]) is None
    with pytest.raises(ValueError, match="missing required field"):
        parse_line(lines[1])
    modes = {parse_line(line)[0] for line in lines[2:]}
    assert modes == {"start", "end", "complete"}
    with pytest.raises(ValueError, match="mode 'update'"):
        parse_line(b'{"mode": "update"}')


def test_parse_line_honours_the_mode_whatever_it_guessed():
    complete = {"project_id": PROJECT, "id": _call_id(1), "trace_id": _call_id(1), "op_name": "p",
                "started_at": T0.isoformat(), "attributes": {}, "inputs": {"model": "m"},
                "ended_at": T0.isoformat(), "summary": {}}
    for guess in ("complete", "start", "end"):
        mode, item = parse_line(msgspec.json.encode(complete), guess)
        assert mode == "complete" and b"mode" not in msgspec.json.encode(item).replace(b"model", b"")
        for explicit in ("start", "end", "complete"):  # a start line may carry every field
            line = msgspec.json.encode({**complete, "mode": explicit})
            mode, item = parse_line(line, guess)
            assert mode == explicit and b'"mode"' not in msgspec.json.encode(item)
            if native is not None:  # the ring's encoder (C) leaves it out too
                assert b'"mode"' not in native.encode(msgspec.json.encode, item)
    with pytest.raises(ValueError, match="missing required field `op_name`"):
        parse_line(msgspec.json.encode({k: v for k, v in complete.items() if k != "op_name"}))


def test_parse_line_keeps_json_fields_as_the_files_bytes_and_checks_them():
    line = msgspec.json.encode({"project_id": PROJECT, "id": _call_id(1), "trace_id": _call_id(1),
                                "op_name": "p", "started_at": T0.isoformat(), "attributes": {},
                                "inputs": {"q": "é", "n": [1, 2.5]}, "ended_at": T0.isoformat(),
                                "summary": {}})
    mode, item = parse_line(line)
    assert mode == "complete" and bytes(item.inputs) == '{"q":"é","n":[1,2.5]}'.encode()
    with pytest.raises(ValueError, match="Expected `object`, got `array` - at `\\$.inputs`"):
        parse_line(line.replace(b'"inputs":{', b'"inputs":[{', 1).replace(b"]}", b"]}]", 1))
    with pytest.raises(ValueError, match="utf-8"):
        parse_line(line.replace("é".encode(), b"\xff", 1))


def test_ingest_stores_every_call_once_from_several_processes(tmp_path):
    n = 20_000
    trace = tmp_path / "calls.jsonl"
    lines = trace_lines(n)
    late = len(lines) - 100  # in the second worker's shard: its line number counted there
    lines.insert(late, b"not json")
    _write(trace, lines)
    with serve_subprocess(tmp_path / "t.db") as url:
        result = _ingest(url, trace, extra=("--processes", "2", "--checkpoint-lines", "3000"))
        ids = _stored_ids(url)
    assert len(ids) == n and set(ids) == {_call_id(i) for i in range(n)}
    # skipped lines are named by number, and make the exit code 1
    assert result.returncode == 1, result.stderr[-3000:]
    assert (f"2 invalid lines skipped ({trace} line 2, {trace} line {late + 1})"
            in result.stdout), result.stdout
    assert f"{trace} line {late + 1} (byte " in result.stderr
    assert not os.path.exists(str(trace) + ".ingest-checkpoint")  # removed once all is done


def test_ingest_reads_zstd_compressed_files(tmp_path):
    n = 2_000
    trace = tmp_path / "calls.jsonl.zst"
    lines = trace_lines(n, seed=2, invalid=False)
    trace.write_bytes(zstandard.ZstdCompressor().compress(b"\n".join(lines)))
    with serve_subprocess(tmp_path / "t.db") as url:
        result = _ingest(url, trace)
        assert result.returncode == 0, result.stderr[-3000:]
        assert len(set(_stored_ids(url))) == n


def test_resume_sends_only_what_the_checkpoint_does_not_cover(tmp_path):
    n = 3_000
    lines = trace_lines(n, seed=3, invalid=False)
    trace = tmp_path / "calls.jsonl"
    _write(trace, lines)
    # as if a previous run was interrupted after the server acknowledged the first half
    half = len(lines) // 2
    while lines[half].startswith(b'{"mode":"end"'):  # resume at a call boundary
        half += 1
    done_offset = sum(len(line) + 1 for line in lines[:half])
    shards = plan_shards([str(trace)], 1)
    shards[0].done = done_offset
    checkpoint = tmp_path / "progress"
    save_checkpoint(str(checkpoint), Checkpoint(files=[file_signature(str(trace))], shards=shards))
    assert os.stat(checkpoint).st_mode & 0o777 == 0o600
    expected = {msgspec.json.decode(line)["id"] for line in lines[half:]}
    with serve_subprocess(tmp_path / "t.db") as url:
        result = _ingest(url, trace, extra=("--checkpoint", str(checkpoint)))
        assert result.returncode == 0, result.stderr[-3000:]
        assert "resumed" in result.stdout
        assert set(_stored_ids(url)) == expected
    assert not checkpoint.exists()


def test_a_checkpoint_for_changed_files_is_refused(tmp_path):
    trace = tmp_path / "calls.jsonl"
    _write(trace, trace_lines(10))
    checkpoint = tmp_path / "progress"
    save_checkpoint(str(checkpoint), Checkpoint(files=[file_signature(str(trace))],
                                                shards=plan_shards([str(trace)], 1)))
    _write(trace, trace_lines(20))
    result = _ingest("http://127.0.0.1:9", trace, extra=("--checkpoint", str(checkpoint)))
    assert result.returncode != 0 and "delete it to start over" in result.stderr


def test_default_workers_are_half_the_cores_from_2_to_16():
    from engine.cli._ingest import default_processes

    assert [default_processes(c) for c in (1, 2, 4, 8, 12, 32, 64, 256)] == [2, 2, 2, 4, 6, 16, 16, 16]
    assert default_processes() == max(2, min(16, (os.cpu_count() or 1) // 2))


def test_workers_are_forked_unless_a_thread_of_someone_else_runs():
    import threading

    from engine.cli._ingest import _start_method

    fork = "fork" if sys.platform == "linux" else "spawn"
    release = threading.Event()
    foreign = [t for t in threading.enumerate()
               if t is not threading.main_thread() and not t.name.startswith("engine-")]
    if not foreign:  # (pytest's plugins may run threads of their own)
        assert _start_method() == fork
        ours = threading.Thread(target=release.wait, name="engine-watchdog-x", daemon=True)
        ours.start()
        assert _start_method() == fork
    theirs = threading.Thread(target=release.wait, name="user-thread", daemon=True)
    theirs.start()
    try:
        assert _start_method() == "spawn"  # it might hold a lock across the fork
    finally:
        release.set()


def test_spawned_workers_store_every_call_too(tmp_path, monkeypatch):
    # the path a command with threads (or a platform without fork) takes: each worker a new
    # interpreter that gets its tracer pickled
    from engine.cli import _ingest

    monkeypatch.setattr(_ingest, "_start_method", lambda: "spawn")
    n = 3_000
    trace = tmp_path / "calls.jsonl"
    _write(trace, trace_lines(n, seed=4))
    with serve_subprocess(tmp_path / "t.db") as url:
        summary = _ingest.run_ingest([str(trace)], url, processes=2, progress=False,
                                     checkpoint_path=str(tmp_path / "ck"))
        # a start and its end go as one complete call, unless the start waited past
        # eager_start_ms (a loaded machine): then they are two items acknowledged
        assert n <= summary.acked <= summary.items and summary.undelivered == 0
        assert set(_stored_ids(url)) == {_call_id(i) for i in range(n)}


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_an_ingest_interrupted_by_a_signal_resumes_and_stores_every_call(tmp_path, signum):
    # Ctrl-C (or a SIGTERM to the group, as a job runner stops it) reaches the command and
    # its (forked) workers, not the sender (a session of its own): what was read is
    # delivered or kept, the checkpoint holds only acknowledged offsets, and the same command
    # again stores the rest
    import signal
    import time

    n = 40_000
    trace = tmp_path / "calls.jsonl"
    _write(trace, trace_lines(n, seed=5, invalid=False))
    checkpoint = tmp_path / "progress"
    argv = [sys.executable, "-m", "engine", "ingest", str(trace), "--no-progress",
            "--processes", "2", "--checkpoint-lines", "2000", "--checkpoint", str(checkpoint)]
    with serve_subprocess(tmp_path / "t.db") as url:
        first = subprocess.Popen([*argv, "--to", url], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while not checkpoint.exists() and first.poll() is None:  # mid-run
                assert time.monotonic() < deadline, "no checkpoint was written"
                time.sleep(0.01)
            interrupted = first.poll() is None
            if interrupted:
                os.killpg(first.pid, getattr(signal, signum))
            _, err = first.communicate(timeout=100)
        finally:
            if first.poll() is None:
                os.killpg(first.pid, signal.SIGKILL)
                first.wait()
        assert interrupted, "the ingest ended before it could be interrupted"
        # one line, no worker's traceback; the sender says what it delivered
        code, line = {"SIGINT": (130, "engine: interrupted"),
                      "SIGTERM": (143, "engine: terminated (SIGTERM)")}[signum]
        assert first.returncode == code and line in err, err[-3000:]
        assert f"the same command resumes from the checkpoint {checkpoint}" in err, err[-3000:]
        assert "Traceback" not in err and "delivered" in err, err[-3000:]
        stored_before = len(set(_stored_ids(url)))
        assert 0 < stored_before < n
        again = subprocess.run([*argv, "--to", url], capture_output=True, text=True,
                               timeout=110)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "resumed" in again.stdout
        ids = _stored_ids(url)
    assert sorted(ids) == sorted(_call_id(i) for i in range(n))  # each once: resent lines upsert


def _complete_lines(n_calls: int, big: int | None = None) -> list[bytes]:
    """``n_calls`` complete calls, one a line; call ``big``'s inputs ~300 KB."""
    lines = []
    for i in range(n_calls):
        inputs = {"big": "x" * 300_000} if i == big else {"i": i}
        lines.append(msgspec.json.encode({
            "project_id": PROJECT, "id": _call_id(i), "trace_id": _call_id(i), "op_name": "p",
            "started_at": T0.isoformat(), "attributes": {}, "inputs": inputs,
            "ended_at": T0.isoformat(), "summary": {}}))
    return lines


def test_an_item_the_server_refuses_is_dead_lettered_and_ingest_goes_on_past_it(tmp_path):
    # the server refuses line 1,501 (413): it is dead-lettered, counted, and the checkpoints
    # go past it -- stopping there would refuse it again at every rerun
    trace, dead = tmp_path / "poison.jsonl", tmp_path / "dead.jsonl"
    _write(trace, _complete_lines(5_000, big=1_500))
    with serve_subprocess(tmp_path / "t.db", max_body_bytes=200_000) as url:
        result = _ingest(url, trace, extra=("--processes", "1", "--checkpoint-lines", "1000",
                                            "--dead-letter-path", str(dead)))
        ids = set(_stored_ids(url))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert ids == {_call_id(i) for i in range(5_000)} - {_call_id(1_500)}
    assert f"1 dead-lettered to {dead} (1 too_large;" in result.stdout, result.stdout
    assert _call_id(1_500) in dead.read_text()  # for `engine replay --dead-letters`
    assert not os.path.exists(str(trace) + ".ingest-checkpoint")


@pytest.mark.parametrize(("deadline", "waited"), [({"delivery_deadline_s": 0.1}, "0.5"),
                                                ({"delivery_deadline_s": 1.0}, "2")])
def test_a_server_that_settles_nothing_in_time_stops_the_ingest_resumably(tmp_path, monkeypatch,
                                                                           deadline, waited):
    # the wait is twice delivery_deadline_s where that is longer (before: 0.5 s whatever
    # the deadline, when the sender may hold an item that long before it dead-letters it)
    from engine.cli import _ingest
    from engine.cli._args import CommandFailed
    from tests.faultserver import FaultServer

    monkeypatch.setattr(_ingest, "_FLUSH_TIMEOUT_S", 0.5)  # (the workers are forked)
    monkeypatch.setattr(_ingest, "_start_method", lambda: "fork")
    trace = tmp_path / "calls.jsonl"
    _write(trace, _complete_lines(100))
    with FaultServer(seed=1, stall_s=60.0) as server, pytest.raises(CommandFailed) as failed:
        _ingest.run_ingest([str(trace)], server.url, processes=1, progress=False,
                           checkpoint_path=str(tmp_path / "ck"), shutdown_timeout_s=0.5,
                           dead_letter_path=str(tmp_path / "dead.jsonl"), **deadline)
    assert str(failed.value) == (
        f"ingest: {trace}: the server did not acknowledge the lines before byte "
        f"{trace.stat().st_size:,} within {waited} s; no line was acknowledged yet: the same "
        "command starts over")


def test_zstd_stream_tells_a_stream_cut_short_from_one_that_ended():
    import io

    from engine.cli._ingest_read import ZstdStream

    frames = [zstandard.ZstdCompressor().compress(b"%d\n" % i * 500) for i in range(3)]
    data = b"".join(frames)
    ends = {sum(map(len, frames[:k])) for k in range(4)}
    for cut in sorted({*ends, *range(0, len(data), 97)}):
        stream = ZstdStream(io.BytesIO(data[:cut]))
        text = io.BufferedReader(stream, 64).read()
        assert stream.truncated == (cut not in ends), cut
        whole = sum(1 for end in ends if end <= cut) - 1
        assert text.startswith(b"".join(b"%d\n" % i * 500 for i in range(whole)))
    with pytest.raises(zstandard.ZstdError, match="Unknown frame descriptor"):
        ZstdStream(io.BytesIO(random.Random(1).randbytes(5000))).read()


def test_files_that_are_not_what_they_claim_are_named_and_fail_the_command(tmp_path):
    rng = random.Random(7)
    noise = tmp_path / "noise.zst"  # random bytes: no zstd
    noise.write_bytes(rng.randbytes(20_000))
    cut = tmp_path / "cut.jsonl.zst"  # a zstd stream cut short
    whole = zstandard.ZstdCompressor().compress(b"\n".join(_complete_lines(2_000)) + b"\n")
    cut.write_bytes(whole[: len(whole) // 2])
    prefix = zstandard.ZstdDecompressor().decompressobj().decompress(cut.read_bytes())
    loaded = prefix.count(b"\n")  # the whole lines before the cut
    junk = tmp_path / "junk.jsonl"  # random bytes named .jsonl: every line skipped
    junk.write_bytes(rng.randbytes(20_000))
    with serve_subprocess(tmp_path / "t.db") as url:
        result = _ingest(url, noise, cut, junk, extra=("--processes", "2"))
        ids = set(_stored_ids(url))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"{noise}: not a zstd file" in result.stderr
    assert f"{cut}: truncated zstd stream after {loaded:,} lines" in result.stderr
    assert ids == {_call_id(i) for i in range(loaded)}
    skipped = junk.read_bytes().count(b"\n") + 1
    assert f"{skipped} invalid lines skipped ({junk} line 1, {junk} line 2, " in result.stdout
    assert "2 files not read to their end" in result.stdout


def test_an_empty_file_loads_nothing_and_succeeds(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with serve_subprocess(tmp_path / "t.db") as url:
        result = _ingest(url, empty)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "read 0 items" in result.stdout


def test_a_corrupt_checkpoint_is_named_with_what_to_do(tmp_path):
    trace = tmp_path / "calls.jsonl"
    _write(trace, trace_lines(10))
    checkpoint = tmp_path / "progress"
    checkpoint.write_bytes(b'{"version": 1, "fil')
    result = _ingest("http://127.0.0.1:9", trace, extra=("--checkpoint", str(checkpoint)))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"checkpoint {checkpoint} cannot be read" in result.stderr
    assert "delete it to start over" in result.stderr


def test_a_checkpoint_that_cannot_be_written_is_refused_before_anything_is_sent(tmp_path):
    trace = tmp_path / "calls.jsonl"
    _write(trace, trace_lines(10))
    # (port 9: nothing listens -- the checkpoint is checked first)
    result = _ingest("http://127.0.0.1:9", trace, extra=("--checkpoint", "/proc/nope/x"))
    assert result.returncode == 2, result.stderr
    assert "engine: error: --checkpoint /proc/nope/x: cannot write in /proc/nope" in result.stderr


def test_an_interrupted_save_leaves_the_previous_checkpoint_and_no_temporary_file(
        tmp_path, monkeypatch):
    trace = tmp_path / "calls.jsonl"
    _write(trace, trace_lines(10))
    path = tmp_path / "progress"
    before = Checkpoint(files=[file_signature(str(trace))], shards=plan_shards([str(trace)], 1))
    save_checkpoint(str(path), before)

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    after = msgspec.structs.replace(before, version=2)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(str(path), after)
    assert sorted(os.listdir(tmp_path)) == ["calls.jsonl", "progress"]
    assert msgspec.json.decode(path.read_bytes(), type=Checkpoint) == before


def _keyed_ids(url: str, key: str) -> set[str]:
    request = urllib.request.Request(url + "/calls/stream_query", headers={
        "Authorization": "Basic " + base64.b64encode(f"api:{key}".encode()).decode()},
        data=msgspec.json.encode({"project_id": PROJECT}))
    with urllib.request.urlopen(request, timeout=60) as resp:
        return {msgspec.json.decode(line)["id"] for line in resp.read().splitlines()}


def test_a_server_that_refuses_every_item_stops_the_ingest_resumably(tmp_path, monkeypatch):
    """A key not granted the project: every item 403. Before, each was dead-lettered and
    the load went on to the end of the file."""
    from engine.cli import _ingest, _ingest_stop
    from engine.cli._args import CommandFailed
    from engine.sender._deadletter import read_dead_letters

    monkeypatch.setattr(_ingest_stop, "REFUSED_RUN_S", 0.0)  # 1,000 refused items suffice
    monkeypatch.setattr(_ingest, "_start_method", lambda: "fork")
    n = 12_000
    trace, dead, checkpoint = tmp_path / "calls.jsonl", tmp_path / "dead.jsonl", tmp_path / "ck"
    _write(trace, _complete_lines(n))
    keys = tmp_path / "keys"
    keys.write_text("granted-key-0123456789 rw ent/*\nother-key-0123456789 rw team-a/*\n")
    keys.chmod(0o600)
    # small rings at first: the worker waits for the sender, as with a file larger than them
    settings = {"processes": 1, "progress": False, "checkpoint_path": str(checkpoint),
                "checkpoint_lines": 1_000, "linger_ms": 5, "dead_letter_path": str(dead)}
    with serve_subprocess(tmp_path / "t.db", keys_file=keys) as url:
        with pytest.raises(CommandFailed) as stopped:
            _ingest.run_ingest([str(trace)], url, api_key="other-key-0123456789",
                               ring_bytes=64 << 10, **settings)
        said = str(stopped.value)
        refused = {letter.call_id for letter in read_dead_letters(dead)}
        # a checkpoint once the first 1,000 lines settled; under load the stop can come first
        kept = checkpoint.exists()
        resumed = _ingest.run_ingest([str(trace)], url, api_key="granted-key-0123456789",
                                     **settings)
        stored = _keyed_ids(url, "granted-key-0123456789")
    assert said.startswith("ingest: stopped early: ") and "\n" not in said, said
    assert "items in a row refused for good (http)" in said
    assert f"(the last, for {PROJECT}: HTTP 403: project_id: this API key (keys line 2) may " \
           f"not write project '{PROJECT}')" in said
    assert f"they are in the dead letters {dead}" in said
    assert said.endswith(f"the same command resumes from the checkpoint {checkpoint}" if kept
                         else "no line was acknowledged yet: the same command starts over"), said
    assert "0123456789" not in said
    assert 1_000 <= len(refused) < n  # stopped early, not at the end of the file
    # the rerun goes on from the checkpoint: every call is stored or in the dead letters
    assert resumed.resumed == kept and resumed.dead_lettered == 0
    assert stored | refused == {_call_id(i) for i in range(n)}
