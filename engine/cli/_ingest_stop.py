"""When ``engine ingest`` stops before the end of its files: a run of refusals.

An item the server refuses on its own (one too large, one project of several that the key
may not write) is dead-lettered and the load goes on past it. A server that refuses every
item (a key not granted the project: 401/403 for each request) or is down past
``delivery_deadline_s`` would have the whole file dead-lettered that way, item by item:
for a large file, minutes of refusals and a dead-letter file as large as the input.

So the command watches the sender's counters while the workers read, and stops the load
once items have been refused for one reason (a ``dead_*`` counter of the summary, or
spooled) ``REFUSED_RUN_ITEMS`` times or more, over ``REFUSED_RUN_S`` seconds or more, with
nothing acknowledged in between. An acknowledgement starts the count over. A contiguous
block of refused items in a file the server otherwise takes would need about a million
items (10 s of refusals) to stop the load.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from engine.cli._summary import dead_letter_file
from engine.common._config import EngineConfig, spool_path
from engine.sender._deadletter import last_dead_letter

REFUSED_RUN_ITEMS = 1_000
REFUSED_RUN_S = 10.0
_LOOK_EVERY_S = 0.1
# what items refused for good are counted under (the sender's counters)
_REASONS = ("dead_http", "dead_deadline", "dead_too_large", "dead_invalid", "spooled_items")


class RefusalRun:
    """Whether the load should stop: ``stop_reason()`` on each turn of the command's loop
    (it looks at ``stats()`` at most every ``_LOOK_EVERY_S``)."""

    def __init__(self, stats: Callable[[], dict[str, Any]], cfg: EngineConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stats, self.cfg, self.clock = stats, cfg, clock
        self.acked = 0
        self.base: dict[str, int] = dict.fromkeys(_REASONS, 0)  # counts at the last ack
        self.since_s: dict[str, float] = {}  # when each reason's run began
        self._next_look_s = 0.0

    def stop_reason(self) -> str | None:
        now = self.clock()
        if now < self._next_look_s:
            return None
        self._next_look_s = now + _LOOK_EVERY_S
        stats = self.stats()
        if stats.get("items_acked", 0) != self.acked:
            self.acked = stats.get("items_acked", 0)
            self.base = {reason: stats.get(reason, 0) for reason in _REASONS}
            self.since_s = {}
            return None
        for reason in _REASONS:
            refused = stats.get(reason, 0) - self.base[reason]
            if refused:
                began_s = self.since_s.setdefault(reason, now)
                if refused >= REFUSED_RUN_ITEMS and now - began_s >= REFUSED_RUN_S:
                    return self._said(reason, refused, now - began_s)
        return None

    def _said(self, reason: str, refused: int, run_s: float) -> str:
        if reason == "spooled_items":
            what, last = "spooled", (f" (not delivered within delivery_deadline_s = "
                                     f"{self.cfg.delivery_deadline_s:g} s)")
            kept = f"the spool {spool_path(self.cfg)} (`engine replay --spool` sends them)"
        else:
            what, last = reason.removeprefix("dead_"), _last_refusal(dead_letter_file(self.cfg))
            kept = (f"the dead letters {dead_letter_file(self.cfg)} (`engine replay "
                    "--dead-letters` sends them)")
        return (f"stopped early: {refused:,} items in a row refused for good ({what}) over "
                f"{run_s:.0f} s with none acknowledged{last}; they are in {kept}")


def _last_refusal(path: str) -> str:
    """The newest dead letter's project and reason (the server's words), or ""."""
    letter = last_dead_letter(path)
    if letter is None:
        return ""
    kind, _, detail = letter.reason.partition(": ")
    status = f"HTTP {letter.status}" if letter.status is not None else kind
    return f" (the last, for {letter.project}: {status}: {' '.join((detail or kind).split())})"
