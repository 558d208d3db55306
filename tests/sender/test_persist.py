"""Where a batch the server will not have goes (engine/sender/_persist.py): the dead letters,
with one log line saying why."""

import logging

from engine.sender._batcher import Batch, Item
from engine.sender._deadletter import DeadLetters, read_dead_letters
from engine.sender._persist import Persister
from engine.sender._spool import SpoolFull

ROUTE = "/v2/e/p/calls/complete"


class _Control:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, name: str, delta: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + delta


def _batch() -> Batch:
    data = b'{"project_id":"e/p","id":"c1"}'
    item = Item((data, b","), len(data), (1,), ROUTE, False, bytes(16), b"e/p", bytes(16), 0,
                True, 1, b"")
    return Batch(ROUTE, [item])


def test_the_dead_letter_line_names_the_http_status_only_when_there_was_one(tmp_path, caplog):
    released: list[Batch] = []
    with DeadLetters(tmp_path / "dead.jsonl") as dead, caplog.at_level(logging.INFO):
        persister = Persister(_Control(), dead, None, released.append)  # type: ignore[arg-type]
        assert persister.dead_letter(_batch(), "shutdown", None, "engine closed before delivery")
        assert persister.dead_letter(_batch(), "http", 400, "bad request")
    lines = [r.getMessage() for r in caplog.records if "dead-lettered" in r.getMessage()]
    assert lines == ["dead-lettered 1 item (shutdown): engine closed before delivery",
                     "dead-lettered 1 item (http, HTTP 400): bad request"]
    assert len(released) == 2 and len(list(read_dead_letters(tmp_path / "dead.jsonl"))) == 2


def test_a_server_refusing_batch_after_batch_gets_one_line_then_one_a_minute(tmp_path, caplog):
    """A wrong key or a refused project over a long eval: the first batch of each reason is
    said at once, the next ones together once a minute has passed, what is left at exit
    before the exit line; every item is still dead-lettered and counted."""
    now = [100.0]
    control = _Control()
    with DeadLetters(tmp_path / "dead.jsonl") as dead, caplog.at_level(logging.INFO):
        persister = Persister(control, dead, None, lambda batch: None,  # type: ignore[arg-type]
                              clock=lambda: now[0])
        for _ in range(50):  # 50 batches within the minute: one line
            persister.dead_letter(_batch(), "http", 401, "invalid API key")
            now[0] += 1
        persister.dead_letter(_batch(), "http", 422, "bad item")  # another reason: said
        persister.say_repeats()  # 50 s since the first: nothing yet
        lines = [r.getMessage() for r in caplog.records if "dead-lettered" in r.getMessage()]
        assert lines == ["dead-lettered 1 item (http, HTTP 401): invalid API key",
                         "dead-lettered 1 item (http, HTTP 422): bad item"]
        now[0] += 10
        persister.say_repeats()  # the housekeeping's tick, a minute on
        persister.say_repeats()  # nothing new since
        for _ in range(3):
            persister.dead_letter(_batch(), "http", 401, "invalid API key")
        persister.say_repeats(force=True)  # the exit
        persister.say_repeats(force=True)
    lines = [r.getMessage() for r in caplog.records if "dead-lettered" in r.getMessage()]
    assert lines[2:] == [
        "dead-lettered 49 items in 49 batches in the last 60 s (http, HTTP 401): invalid API key",
        "dead-lettered 3 items in 3 batches in the last 0 s (http, HTTP 401): invalid API key"]
    assert all(r.levelno == logging.ERROR for r in caplog.records if "dead-lettered" in
               r.getMessage())
    assert control.counts["dead_letters"] == control.counts["dead_http"] == 54
    assert len(list(read_dead_letters(tmp_path / "dead.jsonl"))) == 54


def test_a_batch_of_a_reason_last_said_a_minute_ago_is_said_with_what_came_before_it(
        tmp_path, caplog):
    now = [0.0]
    with DeadLetters(tmp_path / "dead.jsonl") as dead, caplog.at_level(logging.INFO):
        persister = Persister(_Control(), dead, None, lambda batch: None,  # type: ignore[arg-type]
                              clock=lambda: now[0])
        persister.dead_letter(_batch(), "deadline", None, "server down")
        now[0] = 30.0
        persister.dead_letter(_batch(), "deadline", None, "server down")
        now[0] = 61.0
        persister.dead_letter(_batch(), "deadline", None, "server down")
        now[0] = 62.0
        persister.dead_letter(_batch(), "deadline", None, "server down")
    lines = [r.getMessage() for r in caplog.records if "dead-lettered" in r.getMessage()]
    assert lines == ["dead-lettered 1 item (deadline): server down",
                     "dead-lettered 2 items in 2 batches in the last 61 s (deadline): server down"]


class _FullSpool:
    directory = "/spool"

    def __init__(self) -> None:
        self.full = True
        self.put_count = 0

    def put(self, *args: object) -> None:
        if self.full:
            raise SpoolFull("it holds 9 bytes and a 9-byte segment would take it past spool_max_bytes=10")
        self.put_count += 1


def test_a_batch_parked_at_the_spools_bound_goes_to_the_server_when_it_answers(tmp_path, caplog):
    """Parked batches are not only written: the server answering takes the ones it did not
    refuse (all, or the oldest as a probe); counted once however often they come back."""
    control, spool, released, resent = _Control(), _FullSpool(), [], []
    with DeadLetters(tmp_path / "dead.jsonl") as dead, caplog.at_level(logging.INFO):
        persister = Persister(control, dead, spool, released.append)  # type: ignore[arg-type]
        first, second = _batch(), _batch()
        persister.give_up(first, "outage", None, "down")
        persister.give_up(second, "outage", None, "down")
        assert control.counts["unpersisted_spool_full"] == 2 and control.counts["parked_items"] == 2
        persister.retry_parked(now_s=10.0)  # no resend offered: the spool again, still full
        assert persister.parked_items() == 2 and not released
        persister.retry_parked(now_s=20.0, resend=resent.extend, probe=True)
        assert resent == [first] and persister.parked_items() == 1
        persister.give_up(first, "outage", None, "down")  # the probe failed: parked again
        assert control.counts["unpersisted_spool_full"] == 2  # not counted twice
        persister.retry_parked(now_s=30.0, resend=resent.extend)
        assert resent == [first, second, first] and persister.parked_items() == 0
        assert control.counts["parked_items"] == 0
    assert not (tmp_path / "dead.jsonl").exists()  # the bound's batches skip the dead letters
    lines = [r for r in caplog.records if "spool_max_bytes" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelname == "WARNING"


def test_a_refused_batch_parked_for_a_full_disk_is_never_sent_again(tmp_path):
    control, resent = _Control(), []
    blocker = tmp_path / "file"
    blocker.write_text("")
    with DeadLetters(blocker / "dead.jsonl") as dead:  # ENOTDIR: cannot be written
        persister = Persister(control, dead, None, lambda batch: None)  # type: ignore[arg-type]
        assert not persister.dead_letter(_batch(), "http", 400, "bad request")
        persister.retry_parked(now_s=10.0, resend=resent.extend)
    assert resent == [] and persister.parked_items() == 1
    assert control.counts["unpersisted_unwritable"] == 1
