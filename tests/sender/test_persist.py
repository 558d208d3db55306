"""Where a batch the server will not have goes (engine/sender/_persist.py): the dead letters,
with one log line saying why."""

import logging

from engine.sender._batcher import Batch, Item
from engine.sender._deadletter import DeadLetters, read_dead_letters
from engine.sender._persist import Persister

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
    assert lines == ["dead-lettered 1 items (shutdown): engine closed before delivery",
                     "dead-lettered 1 items (http, HTTP 400): bad request"]
    assert len(released) == 2 and len(list(read_dead_letters(tmp_path / "dead.jsonl"))) == 2
