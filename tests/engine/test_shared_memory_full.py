"""A small or full ``/dev/shm`` (a container's default is 64 MiB) never kills a traced
process.

tmpfs gives a page its memory at its first write, and a write into a full one is a SIGBUS:
before ring slots reserved their memory, the fourth producer of four in a 64 MiB
``/dev/shm`` died by it mid-run (measured: signal 7, its remaining calls lost). Now:

- an engine that finds ``/dev/shm`` too small for the rings it should hold puts them in
  its private directory (a file in the temp dir, mapped the same way): every producer traces;
- a claim reserves the slot's ring first, so when ``/dev/shm`` fills later a process that
  finds no room does not trace: the direct API raises ``SharedMemoryFull`` naming the
  remedy, op wrappers return the user's values and count what they dropped, and every
  other process's calls arrive.

The real thing: a small tmpfs mounted on ``/dev/shm`` in a mount namespace of the test's
own (``unshare -m``, root).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import msgspec
import pytest

from engine.common._errors import ConfigError
from engine.server import serve_subprocess
from tests.engine.helpers import make_engine
from tests.server.serve_process import NEEDS_MOUNT, can_mount

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
PROJECT = "ent/shm"

_PROGRAM = textwrap.dedent(
    """
    import json, multiprocessing as mp, os, sys
    import engine
    from engine.common._errors import PayloadTooLarge, SharedMemoryFull
    from engine.wire import utcnow, uuid7

    url, project = sys.argv[1], sys.argv[2]
    ctx = mp.get_context("fork")
    eng = engine.Engine(url=url, project=project, ring_bytes=1 << 20, linger_ms=5,
                        max_block_ms=2000)  # /dev/shm has room for its rings: they are there
    tracer = eng.producer()

    def one_call(tracer, i, text="x"):
        call_id = uuid7()
        tracer.call_start({"project_id": project, "id": call_id, "trace_id": call_id,
                           "op_name": "predict", "started_at": utcnow(), "attributes": {},
                           "inputs": {"i": i, "text": text}})
        tracer.call_end({"project_id": project, "id": call_id, "ended_at": utcnow(),
                         "output": i, "summary": {}})

    def claims_then_waits(name, claimed, go):  # holds its slot until the parent says go
        t = eng.producer()
        one_call(t, 0)
        claimed.put(name)
        go.wait(60)
        for i in range(1, 300):
            one_call(t, i)
        t.close()

    def finds_no_room(report):
        t = eng.producer()
        out = {}
        try:
            one_call(t, 0)
        except SharedMemoryFull as exc:
            out["raised"] = [type(exc).__name__, str(exc)]

        @t.op(name="square")
        def square(x):
            return x * x

        out["op_results"] = [square(i) for i in range(20)]  # the user's values, no error
        report.put(out)
        t.close()

    one_call(tracer, 0)  # the parent's slot
    claimed, go, report = ctx.Queue(), ctx.Event(), ctx.Queue()
    holders = [ctx.Process(target=claims_then_waits, args=(f"p{n}", claimed, go))
               for n in range(2)]
    for p in holders:
        p.start()
    got = sorted(claimed.get(timeout=60) for _ in holders)
    st = os.statvfs("/dev/shm")  # then something else fills /dev/shm, all but 256 KiB
    with open("/dev/shm/filler", "wb") as filler:
        os.posix_fallocate(filler.fileno(), 0, st.f_bavail * st.f_frsize - (256 << 10))
    late = ctx.Process(target=finds_no_room, args=(report,))
    late.start()
    out = report.get(timeout=60)
    late.join(60)
    try:  # larger than a quarter of the ring: the rest of the slot is reserved first
        one_call(tracer, 1, "y" * 700_000)
    except PayloadTooLarge as exc:
        out["large"] = str(exc)
    go.set()
    for p in holders:
        p.join(60)
    os.unlink("/dev/shm/filler")
    out["codes"] = [p.exitcode for p in (*holders, late)]
    out["claimed"] = got
    out["flushed"] = eng.flush(60)
    out["stats"] = {k: eng.stats()[k] for k in ("items_acked", "untraced_no_shared_memory")}
    out["producers"] = eng.stats()["producers"]
    eng.close()
    print(json.dumps(out), flush=True)
    """
)


def _stored(url: str) -> list[dict]:
    request = urllib.request.Request(url + "/calls/stream_query", method="POST",
                                     data=msgspec.json.encode({"project_id": PROJECT}))
    with urllib.request.urlopen(request, timeout=30) as resp:
        return [msgspec.json.decode(line) for line in resp.read().splitlines()]


def _run_with_small_shm(tmp_path: Path, program_text: str, **env_extra: str):
    """``program_text`` with a 16 MiB tmpfs on /dev/shm (a mount namespace of its own),
    against a fresh SQLite ``engine serve``: (the run, its last JSON line, what was stored)."""
    program = tmp_path / "program.py"
    program.write_text(program_text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    env.update(PYTHONPATH=str(REPO), **env_extra)
    with serve_subprocess(tmp_path / "t.db") as url:
        script = (f"mount -t tmpfs -o size=16m tmpfs /dev/shm && exec {sys.executable} "
                  f"{program} {url} {PROJECT}")
        result = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True,
                                text=True, timeout=180, env=env)
        assert result.returncode == 0, result.stderr[-4000:]
        return result, json.loads(result.stdout.strip().splitlines()[-1]), _stored(url)


@pytest.mark.skipif(not can_mount(), reason=NEEDS_MOUNT)
def test_a_producer_that_finds_dev_shm_full_does_not_trace_and_nobody_dies(tmp_path):
    # three producers hold their slots; then /dev/shm fills; a fourth finds no room
    result, out, stored = _run_with_small_shm(tmp_path, _PROGRAM)
    assert out["codes"] == [0, 0, 0], result.stderr[-4000:]  # no SIGBUS, no crash
    kind, message = out["raised"]
    assert kind == "SharedMemoryFull" and "docker run --shm-size" in message
    assert "no room in /dev/shm for this process's ring" in message
    assert out["op_results"] == [i * i for i in range(20)]
    # the op wrapper's 20 calls, each counted once, where the owner sees it
    assert out["stats"]["untraced_no_shared_memory"] == 20
    assert "room in shared memory" in out["large"]
    assert out["producers"]["too_large"] == 1
    assert out["flushed"]
    assert len(stored) == 1 + 2 * 300 == len({c["id"] for c in stored})
    assert "this process cannot trace" in result.stderr  # logged once, by the process
    assert result.stderr.count("this process cannot trace") == 1
    assert "found no room in /dev/shm" in result.stderr  # in the sender's exit line


def test_an_item_larger_than_a_quarter_of_the_ring_reserves_the_rest_and_is_delivered(tmp_path):
    import engine
    from engine.wire import utcnow, uuid7

    with serve_subprocess(tmp_path / "t.db") as url:
        eng = engine.Engine(url=url, project=PROJECT, ring_bytes=1 << 20, linger_ms=5)
        try:
            tracer = eng.producer()
            small, large = uuid7(), uuid7()
            for call_id, text in ((small, "x"), (large, "y" * 1_500_000)):  # slot: 2 MiB
                tracer.call_start({"project_id": PROJECT, "id": call_id, "trace_id": call_id,
                                   "op_name": "predict", "started_at": utcnow(),
                                   "attributes": {}, "inputs": {"text": text}})
                tracer.call_end({"project_id": PROJECT, "id": call_id, "ended_at": utcnow(),
                                 "output": None, "summary": {}})
            assert eng.flush(30)
            assert eng.stats()["producers"]["too_large"] == 0
        finally:
            eng.close()
        stored = {c["id"]: c for c in _stored(url)}
    assert set(stored) == {small, large}
    assert len(stored[large]["inputs"]["text"]) == 1_500_000


_SMALL_SHM_PROGRAM = textwrap.dedent(
    """
    import json, multiprocessing as mp, os, sys, tempfile
    import engine
    from engine.ring import _files
    from engine.wire import utcnow, uuid7

    url, project = sys.argv[1], sys.argv[2]
    eng = engine.Engine(url=url, project=project, linger_ms=5)  # ring_bytes: 16 MiB
    segment = _files.spec_segment_path(eng._ringset.spec)

    def producer(n):
        t = eng.producer()
        for i in range(300):
            call_id = uuid7()
            t.call_start({"project_id": project, "id": call_id, "trace_id": call_id,
                          "op_name": "predict", "started_at": utcnow(), "attributes": {},
                          "inputs": {"n": n, "i": i, "text": "z" * 3000}})
            t.call_end({"project_id": project, "id": call_id, "ended_at": utcnow(),
                        "output": i, "summary": {}})
        t.close()

    procs = [mp.get_context("fork").Process(target=producer, args=(n,)) for n in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    out = {"codes": [p.exitcode for p in procs], "flushed": eng.flush(60),
           "segment": segment, "tmp": tempfile.gettempdir(),
           "shm_used": sorted(os.listdir("/dev/shm"))}
    eng.close()
    print(json.dumps(out), flush=True)
    """
)


@pytest.mark.skipif(not can_mount(), reason=NEEDS_MOUNT)
def test_with_dev_shm_too_small_the_rings_go_to_the_temp_dir_and_every_producer_traces(tmp_path):
    # 16 MiB of /dev/shm: room for no ring of 16 MiB; six producers write 300 calls each
    result, out, stored = _run_with_small_shm(tmp_path, _SMALL_SHM_PROGRAM, TMPDIR=str(tmp_path))
    assert out["codes"] == [0] * 6 and out["flushed"], result.stderr[-4000:]
    assert out["segment"].startswith(str(tmp_path)) and out["segment"].endswith("/segment")
    assert not any(name.endswith(".seg") for name in out["shm_used"])
    assert "its rings are in" in result.stderr and "docker run --shm-size" in result.stderr
    assert len(stored) == 6 * 300 == len({c["id"] for c in stored})
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("engine-rings-")]  # removed


def test_a_ring_set_on_disk_is_found_read_and_recovered_like_one_in_dev_shm(tmp_path,
                                                                           monkeypatch):
    from engine.ring import RingSet, _files, _orphans

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # gettempdir() reads TMPDIR again
    rings = RingSet.create(1 << 20, 4, on_disk=True)
    try:
        name = rings.spec.shm_name
        path = _files.spec_segment_path(rings.spec)
        assert path == str(tmp_path / name / "segment") == _files.segment_path(name)
        assert not os.path.exists(os.path.join(_files.SEGMENT_DIR, name + ".seg"))
        assert os.stat(path).st_mode & 0o777 == 0o600
        writer = rings.writer()
        for _ in range(5):
            assert writer.try_write(3, 0, None, None, b"p", b"x" * 100, 0)
        # what recovery reads of a dead engine's ring set: its spec and unreleased records
        spec = _orphans.spec_of(name)
        assert spec is not None and spec.ring_bytes == 1 << 20
        assert _orphans.unreleased_records(spec) == 5
        other = RingSet.attach(rings.spec)  # a sender attaches by the spec
        try:
            batch = other.reader().read(1 << 20)
            assert len(batch) == 5
        finally:
            other.close()
    finally:
        rings.close()
        rings.unlink()
    assert not os.path.exists(path)


def test_rings_larger_than_this_machine_can_map_are_a_config_error(tmp_path):
    """4 GiB × 65,536 slots × 2 (512 TiB): it raised the file system's bare OSError."""
    with pytest.raises(ConfigError, match=r"^ring_bytes: 65,536 rings \(max_slots\) of twice "
                                          r"4,294,967,296 bytes cannot be made here \(.+\): lower"):
        make_engine("http://127.0.0.1:9", tmp_path, ring_bytes=4 << 30, max_slots=65_536)
