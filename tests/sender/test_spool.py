import errno
import os
import stat
import threading

import msgspec
import pytest

from engine.common._files import KeepFree
from engine.sender._deadletter import DeadLetters
from engine.sender._spool import Spool, SpoolCorrupt, SpoolFull

ROUTE = "/v2/ent/proj/calls/complete"


def body(n: int, pad_bytes: int = 200) -> bytes:
    return msgspec.json.encode(
        {"batch": [{"id": f"c{n}-{i}", "pad": "x" * pad_bytes} for i in range(3)]}
    )


def segment_files(spool: Spool) -> list[str]:
    return sorted(p.name for p in spool.directory.glob("*.seg"))


def test_round_trip_put_pending_load_done(tmp_path):
    spool = Spool(tmp_path / "spool")
    entry = spool.put(ROUTE, body(1), item_count=3, meta={"retry_id": "r1"})
    assert spool.pending() == [entry]
    assert spool.count_pending == 1 and spool.bytes_pending == entry.size_bytes
    assert spool.load(entry) == (ROUTE, body(1))
    assert entry.meta == {"retry_id": "r1"} and entry.item_count == 3
    spool.done(entry)
    assert spool.pending() == [] and spool.count_pending == 0 and spool.bytes_pending == 0
    assert segment_files(spool) == []


def test_directory_is_0700_and_segments_0600(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.put(ROUTE, body(1), item_count=3)
    assert stat.S_IMODE(spool.directory.stat().st_mode) == 0o700
    for name in segment_files(spool):
        assert stat.S_IMODE((spool.directory / name).stat().st_mode) == 0o600


def test_segments_are_compressed(tmp_path):
    spool = Spool(tmp_path / "spool")
    entry = spool.put(ROUTE, body(1, pad_bytes=50_000), item_count=3)
    assert entry.size_bytes < entry.raw_bytes // 10


def test_pending_is_oldest_first_and_survives_a_restart(tmp_path):
    spool = Spool(tmp_path / "spool")
    written = [spool.put(ROUTE, body(n), item_count=3, meta={"n": n}) for n in range(5)]
    reopened = Spool(tmp_path / "spool")
    pending = reopened.pending()
    assert [e.name for e in pending] == [e.name for e in written]
    assert [e.meta["n"] for e in pending] == list(range(5))
    assert [reopened.load(e)[1] for e in pending] == [body(n) for n in range(5)]
    assert reopened.bytes_pending == sum(e.size_bytes for e in written)


def flip_one_byte(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("offset", [0, 10, 40, -30, -1])
def test_corrupt_segment_is_moved_aside_and_counted(tmp_path, offset):
    spool = Spool(tmp_path / "spool")
    good, bad = spool.put(ROUTE, body(1), 3), spool.put(ROUTE, body(2), 3)
    flip_one_byte(spool.directory / bad.name, offset)
    reopened = Spool(tmp_path / "spool")
    assert reopened.pending() == [good]
    assert reopened.corrupt_count == 1
    assert (spool.directory / "corrupt" / bad.name).exists()
    assert stat.S_IMODE((spool.directory / "corrupt").stat().st_mode) == 0o700


def test_truncated_segment_is_moved_aside(tmp_path):
    spool = Spool(tmp_path / "spool")
    entry = spool.put(ROUTE, body(1), 3)
    path = spool.directory / entry.name
    path.write_bytes(path.read_bytes()[:20])
    assert Spool(tmp_path / "spool").corrupt_count == 1


def test_load_of_a_segment_damaged_after_listing_raises_and_moves_it(tmp_path):
    spool = Spool(tmp_path / "spool")
    entry = spool.put(ROUTE, body(1), 3)
    flip_one_byte(spool.directory / entry.name, -5)
    with pytest.raises(SpoolCorrupt, match=entry.name):
        spool.load(entry)
    assert spool.corrupt_count == 1 and spool.pending() == []


def test_failed_write_leaves_no_segment_and_no_temporary(tmp_path, monkeypatch):
    spool = Spool(tmp_path / "spool")

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        spool.put(ROUTE, body(1), 3)
    monkeypatch.undo()
    assert list(spool.directory.iterdir()) == []
    assert spool.count_pending == 0


def test_temporaries_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    directory = tmp_path / "spool"
    Spool(directory)
    dead = directory / ".tmp-00000000000000000001-999999999-000000.seg.partial"
    live = directory / ".tmp-00000000000000000002-1-000000.seg.partial"  # pid 1 always exists
    dead.write_bytes(b"partial")
    live.write_bytes(b"partial")
    spool = Spool(directory)
    assert not dead.exists() and live.exists()
    assert spool.pending() == []


def test_max_bytes_refuses_a_segment_that_does_not_fit(tmp_path):
    spool = Spool(tmp_path / "spool", max_bytes=1_000)
    first = spool.put(ROUTE, body(1), 3)
    with pytest.raises(SpoolFull, match="spool_max_bytes=1,000"):
        while True:
            spool.put(ROUTE, body(2), 3)
    assert spool.bytes_pending <= 1_000
    count = spool.count_pending
    spool.done(first)
    spool.put(ROUTE, body(3), 3)
    assert spool.count_pending == count


def test_done_is_idempotent(tmp_path):
    spool = Spool(tmp_path / "spool")
    entry = spool.put(ROUTE, body(1), 3)
    spool.done(entry)
    spool.done(entry)
    assert spool.pending() == []


def test_concurrent_puts_from_threads_are_all_kept(tmp_path):
    spool = Spool(tmp_path / "spool")

    def writer(first: int) -> None:
        for n in range(first, first + 25):
            spool.put(ROUTE, body(n), 3, meta={"n": n})
            spool.pending()

    threads = [threading.Thread(target=writer, args=(k * 100,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pending = spool.pending()
    assert sorted(e.meta["n"] for e in pending) == [
        k * 100 + i for k in range(4) for i in range(25)
    ]
    assert spool.count_pending == 100 and spool.corrupt_count == 0


def test_keep_free_refuses_a_segment_that_would_leave_its_disk_less_free(tmp_path):
    """``disk_keep_free_bytes``: an ENOSPC of the setting (KeepFree), naming it, before the
    disk is full; nothing written, and a segment that leaves enough free goes."""
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    spool = Spool(tmp_path / "spool", keep_free_bytes=free + (1 << 30), create=False)
    with pytest.raises(KeepFree, match="disk_keep_free_bytes") as refused:
        spool.put(ROUTE, body(1), 3)
    assert refused.value.errno == errno.ENOSPC
    assert spool.pending() == [] and not (tmp_path / "spool").exists()
    assert Spool(tmp_path / "spool", keep_free_bytes=1 << 20).put(ROUTE, body(1), 3)


def test_the_dead_letters_keep_the_disk_free_too(tmp_path):
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    with (DeadLetters(tmp_path / "dead.jsonl", keep_free_bytes=free + (1 << 30)) as dead,
          pytest.raises(KeepFree, match="disk_keep_free_bytes")):
        dead.add(reason="http", status=400, call_id=None, route=ROUTE, project="e/p",
                 item_json=b"{}")
    assert not (tmp_path / "dead.jsonl").exists()
