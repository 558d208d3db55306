"""Replay splits like the live path: spool segments and dead letters larger than the
server's limit are re-batched to it on 413; an item the server refuses alone is
dead-lettered as too large; nothing waits behind it."""

from __future__ import annotations

import msgspec
import pytest

from engine.sender._deadletter import DeadLetters, read_dead_letters
from engine.sender._spool import Spool
from tests.engine.helpers import make_engine
from tests.faultserver import FaultServer
from tests.pipeline import Sandbox, poll_until

pytestmark = pytest.mark.integration

PROJECT = "ent/split"
ROUTE = f"/v2/{PROJECT}/calls/complete"
LIMIT_BYTES = 1 << 20


def _call_id(i: int) -> str:
    return f"0190a0b0-0000-7000-8000-{i:012d}"


def _complete(i: int, text_bytes: int) -> bytes:
    return msgspec.json.encode({
        "project_id": PROJECT, "id": _call_id(i), "trace_id": f"0190a0b0-0000-7000-9000-{i:012d}",
        "op_name": "op", "started_at": "2025-01-01T00:00:00Z",
        "ended_at": "2025-01-01T00:00:01Z", "attributes": {}, "inputs": {"t": "x" * text_bytes},
        "summary": {},
    })  # fmt: skip


def _segment(first: int, count: int, text_bytes: int) -> bytes:
    return b'{"batch":[' + b",".join(_complete(i, text_bytes) for i in range(first, first + count)) + b"]}"


def _spool_with_an_oversized_item(directory) -> tuple[set[str], str]:
    """Three 3 MiB segments (600 calls of ~5 KB each) and, in the middle one, one call
    of 1.5 MiB that no request under the limit can carry."""
    spool = Spool(directory)
    spool.put(ROUTE, _segment(0, 600, 5000), 600)
    huge = _call_id(10_000)
    middle = _segment(600, 300, 5000)[:-2] + b"," + _complete(10_000, 3 << 19) + b"," + \
        _segment(900, 300, 5000)[len(b'{"batch":['):]
    spool.put(ROUTE, middle, 601)
    spool.put(ROUTE, _segment(1200, 600, 5000), 600)
    return {_call_id(i) for i in range(1800)}, huge


def test_replay_cuts_spooled_segments_to_a_1_mib_limit_and_dead_letters_the_item_too_large(
        tmp_path):
    sandbox = Sandbox(tmp_path)
    spool_dir = tmp_path / "spool"
    expected, huge = _spool_with_an_oversized_item(spool_dir)
    # a server taking plain bodies only: its limit is on what each item weighs (zstd would
    # shrink these repetitive items far below it)
    with FaultServer(limit_bytes=LIMIT_BYTES, accepts_encodings=()) as server:
        replayed = sandbox.replay(server.url, "--spool", str(spool_dir), timeout_s=120)
        stored = server.stored_ids(PROJECT)
        largest = max(r.wire_bytes for r in server.records(ROUTE) if r.status == 200)
        duplicates = server.duplicate_deliveries()
    assert replayed.returncode == 1, replayed.stderr  # one item refused for good
    assert stored == expected and duplicates == 0
    assert largest <= LIMIT_BYTES
    assert Spool(spool_dir).pending() == []
    letters = list(read_dead_letters(sandbox.dead_letter_path))
    assert [(letter.call_id, letter.reason.split(":")[0]) for letter in letters] == [
        (huge, "too_large")]


def test_dead_letters_are_replayed_in_batches_cut_to_the_limit(tmp_path):
    sandbox = Sandbox(tmp_path)
    with DeadLetters(sandbox.dead_letter_path) as letters:
        for i in range(400):
            letters.add(reason="deadline", status=None, call_id=_call_id(i), route=ROUTE,
                        project=PROJECT, item_json=_complete(i, 10_000))
    with FaultServer(limit_bytes=LIMIT_BYTES, accepts_encodings=()) as server:  # plain (above)
        replayed = sandbox.replay(server.url)
        stored = server.stored_ids(PROJECT)
        requests = [r for r in server.records(ROUTE)]
    assert replayed.returncode == 0, replayed.stderr
    assert stored == {_call_id(i) for i in range(400)}
    assert 4 <= len([r for r in requests if r.status == 200]) <= 12  # batched, not one by one
    assert not sandbox.dead_letter_path.exists()


def test_the_senders_background_replay_splits_spooled_segments_too(tmp_path):
    spool_dir = tmp_path / "spool"
    expected, huge = _spool_with_an_oversized_item(spool_dir)
    with FaultServer(limit_bytes=LIMIT_BYTES) as server, make_engine(
            server.url, tmp_path, spool_dir=str(spool_dir)) as eng:
        assert server.wait_for(lambda: server.stored_ids(PROJECT) == expected, timeout_s=60)
        assert poll_until(lambda: not Spool(spool_dir).pending(), timeout_s=30)  # not a request
        # the replay counts what it dead-lettered once its pass over the segments ends
        assert poll_until(lambda: eng.stats()["dead_too_large"] == 1, timeout_s=10)
        stats = eng.stats()
    assert stats["dead_too_large"] == 1
    letters = list(read_dead_letters(tmp_path / "dead_letters.jsonl"))
    assert [letter.call_id for letter in letters] == [huge]
