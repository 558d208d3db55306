"""``engine ingest``: every call in the files stored once, compressed input, resuming."""

import datetime as dt
import os
import random
import subprocess
import sys
import urllib.request

import msgspec
import pytest
import zstandard

from engine.cli._ingest import Checkpoint, _signature, parse_line, plan_shards, save_checkpoint
from engine.native._accel import native
from engine.server import serve_subprocess

pytestmark = pytest.mark.integration
PROJECT = "ent/ingest"
T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)


def _call_id(i: int) -> str:
    return f"0190a0b0-0000-7000-8000-{i:012d}"


def trace_lines(n_calls: int, seed: int = 1) -> list[bytes]:
    """``n_calls`` calls: about a third as start+end pairs, the rest complete (with or
    without ``"mode"``), plus a blank and an invalid line that ingest must skip."""
    rng = random.Random(seed)
    lines = [b"", b'{"mode": "start", "oops": 1}']
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
    _write(trace, trace_lines(n))
    with serve_subprocess(tmp_path / "t.db") as url:
        result = _ingest(url, trace, extra=("--processes", "2", "--checkpoint-lines", "3000"))
        assert result.returncode == 0, result.stderr[-3000:]
        ids = _stored_ids(url)
    assert len(ids) == n and set(ids) == {_call_id(i) for i in range(n)}
    assert "1 invalid lines skipped" in result.stdout
    assert not os.path.exists(str(trace) + ".ingest-checkpoint")  # removed once all is done


def test_ingest_reads_zstd_compressed_files(tmp_path):
    n = 2_000
    trace = tmp_path / "calls.jsonl.zst"
    trace.write_bytes(zstandard.ZstdCompressor().compress(b"\n".join(trace_lines(n, seed=2))))
    with serve_subprocess(tmp_path / "t.db") as url:
        result = _ingest(url, trace)
        assert result.returncode == 0, result.stderr[-3000:]
        assert len(set(_stored_ids(url))) == n


def test_resume_sends_only_what_the_checkpoint_does_not_cover(tmp_path):
    n = 3_000
    lines = trace_lines(n, seed=3)
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
    save_checkpoint(str(checkpoint), Checkpoint(files=[_signature(str(trace))], shards=shards))
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
    save_checkpoint(str(checkpoint), Checkpoint(files=[_signature(str(trace))],
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
        assert summary.acked == n and summary.undelivered == 0  # start + end: one call
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
    _write(trace, trace_lines(n, seed=5))
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
