"""No silent slowdown: what the sender says while producers wait for ring space.

A producer whose ring is full waits for room (``on_full = "block"``, counted in the control
block's ``blocked_ms``), or drops the call (``on_full = "drop"``, ``dropped_full``): the
traced program slows down, or loses calls, and without this nobody says so until the exit
line. Once producers waited ``min_blocked_s`` (5 s) in all, or dropped a call, one warning says
how long they waited (or how many calls were dropped) since the last one, with what bounds
delivery (the round trip, the POSTs in flight, the rings' bytes); then at most one line
every ``every_s`` while it goes on.

Records stay in a ring until the server acknowledges the batch that holds them, so what is
in flight is at most the rings' bytes: toward a server a long round trip away that, not the
server's rate, bounds calls/s (``ring_bytes`` carries more; ``engine doctor URL`` says which).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from engine.common._redact import redact_url

log = logging.getLogger("engine.sender")

DEFAULT_EVERY_S = 30.0
DEFAULT_MIN_BLOCKED_S = 5.0  # a start-up hiccup (a store warming up) is not news


class PressureLog:
    """Rate-limited warnings about producers waiting on (or dropping at) full rings.
    ``observe`` is cheap when nothing changed; ``clock`` in seconds, injectable."""

    def __init__(self, url: str, every_s: float = DEFAULT_EVERY_S,
                 min_blocked_s: float = DEFAULT_MIN_BLOCKED_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = redact_url(url)
        self.every_s = every_s
        self.min_blocked_ms = min_blocked_s * 1000
        self.clock = clock
        self.mark: tuple[int, int, float] | None = None  # (blocked_ms, dropped, when)
        self.mark_wall = 0.0
        self.next_line_s = 0.0
        self.lines = 0

    def observe(self, blocked_ms: int, dropped: int, facts: Callable[[], str]) -> bool:
        """The producers' totals now (of this sender's slots); True when a line was logged.
        ``facts`` (what bounds delivery) is asked for only then."""
        now = self.clock()
        if self.mark is None:
            self.mark, self.mark_wall = (blocked_ms, dropped, now), time.time()
            return False
        mark_blocked, mark_dropped, since = self.mark
        waited_ms, lost = blocked_ms - mark_blocked, dropped - mark_dropped
        if (waited_ms < self.min_blocked_ms and not lost) or now < self.next_line_s:
            if now - since > self.every_s and waited_ms < self.min_blocked_ms and not lost:
                self.mark = (blocked_ms, dropped, now)  # an old wait is not news
                self.mark_wall = time.time()
            return False
        since_text = time.strftime("%H:%M:%S", time.localtime(self.mark_wall))
        self.mark, self.mark_wall = (blocked_ms, dropped, now), time.time()
        self.next_line_s = now + self.every_s
        self.lines += 1
        what = []
        if waited_ms >= self.min_blocked_ms:
            what.append(f"producers waited {waited_ms / 1000:.1f} s in all for ring space")
        if lost:
            what.append(f"{lost:,} calls were dropped on full rings (on_full='drop', or "
                        "waiting for room as the engine closed)")
        log.warning("%s since %s: calls are made faster than %s acknowledges them (%s)",
                    " and ".join(what), since_text, self.url, facts())
        return True


def bound_facts(round_trip_ms: float | None, limit: int, body_bytes: int, producers: int,
                ring_bytes: int, pinned_alone: int = 0, wait_ms: float | None = None) -> str:
    """What bounds delivery, in the warning's words. ``round_trip_ms``: a POST's, from
    sending to its answer; ``wait_ms``: a record's, from its write to its acknowledgement
    (queued behind busy POSTs too: what the rings' bound divides by); ``pinned_alone``:
    starts of calls still open sent since the last warning as requests of their own
    because they held their ring's space (toward a server without upsert batches: weave's)."""
    rings = producers * ring_bytes
    trip = "not measured yet" if round_trip_ms is None else f"~{round_trip_ms:.0f} ms"
    waited = ""
    if wait_ms is not None and round_trip_ms is not None and wait_ms > 1.5 * round_trip_ms:
        waited = f" (a record waits ~{wait_ms:.0f} ms from its write to its acknowledgement)"
    text = (f"round trip {trip}{waited}, up to {limit} POSTs in flight, bodies up to "
            f"{body_bytes / (1 << 20):.1f} MiB; records stay in the rings until acknowledged, "
            f"so at most their {_mib(rings)} MiB ({producers} producer"
            f"{'' if producers == 1 else 's'} x ring_bytes {ring_bytes / (1 << 20):g} MiB) "
            "are in flight")
    held_ms = wait_ms if wait_ms is not None else round_trip_ms
    if held_ms is not None and held_ms > 0:
        bound = rings / (held_ms / 1000)
        text += (f": at most ~{_mib(bound)} MiB/s {'at this wait' if waited else 'at this round trip'}"
                 "; where the round trip, not the server's rate, bounds it, a larger "
                 "ring_bytes carries more (`engine doctor URL` times it)")
    if pinned_alone:
        text += (f"; {pinned_alone:,} starts of calls still open went as requests of their "
                 "own (their ends as more) because open calls filled half of their ring: a "
                 "larger ring_bytes keeps them until their ends, one complete call each "
                 "(docs/configuration.md, \"Many calls open at once\")")
    return text


def _mib(n_bytes: float) -> str:
    """``n_bytes`` in MiB as the warning writes it: whole from 10 up, else two figures."""
    mib = n_bytes / (1 << 20)
    return f"{mib:.0f}" if mib >= 10 else f"{mib:.2g}"
