"""The retry policy: what an answer means, how long to wait, when to give up (WIRE.md §4).

``classify`` turns one attempt's outcome (a status and body, or an exception) into a
``Verdict`` the sender acts on; ``Backoff`` says how long to wait before the next attempt;
``Deadline`` bounds the whole delivery of one batch across all its attempts.
"""

from __future__ import annotations

import datetime
import email.utils
import enum
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import msgspec

# A Retry-After beyond this is treated as this: a misconfigured or hostile server must not
# park a batch for hours. The per-batch Deadline bounds the wait further.
MAX_RETRY_AFTER_S = 300.0

COMPLETE_MODE_REQUIRED_CODE = "CALLS_COMPLETE_MODE_REQUIRED"

_RETRIABLE_4XX = frozenset({408, 409, 425, 429})
# 501 Not Implemented and 505 HTTP Version Not Supported: this server will never take the
# request (a plain file server answers 501 to POST), so retrying only delays the dead
# letters by the whole delivery deadline (OTLP/HTTP retries neither)
_PERMANENT_5XX = frozenset({501, 505})


class Verdict(enum.Enum):
    """What the sender does with a batch after one attempt."""

    OK = "ok"  # acknowledged: release its ring space
    RETRY = "retry"  # transient: back off and send the same batch again
    SPLIT_413 = "split_413"  # too large: halve, resend both halves, lower the size target
    SPLIT_422 = "split_422"  # holds an invalid item: split to isolate it
    DEAD = "dead"  # permanent: dead-letter the batch's items
    COMPLETE_MODE_REQUIRED = "complete_mode_required"  # switch to the v2 complete route


def classify(status: int | None, body: bytes = b"", exc: BaseException | None = None) -> Verdict:
    """The verdict for one attempt: ``status`` and ``body`` of the answer, or ``exc`` if none came."""
    if exc is not None or status is None:
        return Verdict.RETRY
    if 200 <= status < 300:
        # a trace server answers JSON (or nothing); a web page is a proxy's login or block
        # page, or the URL of another site: taken as an acknowledgement, every call was lost
        return Verdict.DEAD if is_web_page(body) else Verdict.OK
    if status == 413:
        return Verdict.SPLIT_413
    if status == 422:
        return Verdict.SPLIT_422
    if status == 400 and error_code(body) == COMPLETE_MODE_REQUIRED_CODE:
        return Verdict.COMPLETE_MODE_REQUIRED
    return Verdict.RETRY if retriable_status(status) else Verdict.DEAD


# A batch answered 500 is cut in halves to find the call the server fails on (weave's
# server answers 500 to one it cannot store), by the sender and by replays; not past this
# many answers 500 in a row: the server then fails everything (an outage), not one call.
# Finding one call among a million takes ~20 in a row at most.
ISOLATE_MAX_IN_A_ROW = 32


def is_web_page(body: bytes) -> bool:
    """Whether an answer's body is HTML or XML (a page), which no trace server answers."""
    return body[:256].lstrip()[:1] == b"<"


WEB_PAGE_REASON = ("answered with a web page, not a trace server's JSON: the url setting names "
                   "no trace server (a proxy's login or block page, or another site?)")


def start_not_found(status: int | None, body: bytes) -> bool:
    """Whether an answer is weave's to a v2 call/end whose start it has not stored: 404
    "Cannot end call …: no start found in project …". It inserts asynchronously, so a start
    it acknowledged may not show yet: the end is worth sending again for a while (the route
    exists: it is no sign of an older server)."""
    return status == 404 and _NO_START_FOUND in body.lower()


_NO_START_FOUND = b"no start found"


def retriable_status(status: int) -> bool:
    """Whether an error status may succeed later: the listed 4xx and 5xx but 501 and 505."""
    return status in _RETRIABLE_4XX or (status >= 500 and status not in _PERMANENT_5XX)


def error_code(body: bytes) -> str | None:
    """The top-level ``error_code`` of a JSON error body, as the real client reads it."""
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    code = data.get("error_code") if isinstance(data, dict) else None
    return code if isinstance(code, str) else None


def retry_after_s(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asked us to wait, or None when it did not say (or said garbage).

    ``Retry-After-ms`` wins over ``Retry-After`` (it is more precise). ``Retry-After`` may be
    delta-seconds or an HTTP date; ``now`` (Unix seconds) is injectable for the latter. The
    result is clamped to ``[0, MAX_RETRY_AFTER_S]``.
    """
    millis = _parse_seconds(_header(headers, "retry-after-ms"))
    if millis is not None:
        return _clamp(millis / 1000.0)
    value = _header(headers, "retry-after")
    if value is None:
        return None
    seconds = _parse_seconds(value)
    if seconds is None:
        seconds = _seconds_until_date(value, time.time() if now is None else now)
    return None if seconds is None else _clamp(seconds)


def _header(headers: Mapping[str, str], lower_name: str) -> str | None:
    value = headers.get(lower_name)
    if value is not None:
        return value
    # Plain dicts are case-sensitive; aiohttp's CIMultiDict is not.
    for name, candidate in headers.items():
        if name.lower() == lower_name:
            return candidate
    return None


def _parse_seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) else None


def _seconds_until_date(value: str, now: float) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" parses naive; HTTP dates are always GMT
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp() - now


def _clamp(seconds: float) -> float:
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


@dataclass(frozen=True)
class Backoff:
    """Jittered exponential backoff.

    Attempt ``n`` (1 = the wait before the first retry) has a ceiling of
    ``initial_ms * multiplier ** (n - 1)``, capped at ``max_ms``. The wait is drawn uniformly
    from ``[ceiling * (1 - jitter), ceiling]``: ``jitter=1`` is AWS "full jitter", ``jitter=0``
    no jitter. The default 0.5 keeps every wait at least half its ceiling, so a retry storm
    spreads out without ever retrying almost immediately. A server's Retry-After is a floor.
    """

    initial_ms: float = 100
    max_ms: float = 10_000
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.initial_ms <= self.max_ms:
            raise ValueError(
                f"Backoff: need 0 < initial_ms <= max_ms, got {self.initial_ms}, {self.max_ms}"
            )
        if self.multiplier < 1:
            raise ValueError(f"Backoff.multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"Backoff.jitter must be in [0, 1], got {self.jitter}")

    def ceiling_s(self, attempt: int) -> float:
        """The longest wait before retry number ``attempt`` (before any Retry-After)."""
        exponent = max(attempt, 1) - 1
        # log-space comparison avoids float overflow for large attempt counts
        if exponent * math.log(self.multiplier) >= math.log(self.max_ms / self.initial_ms):
            return self.max_ms / 1000.0
        return self.initial_ms * self.multiplier**exponent / 1000.0

    def delay_s(
        self, attempt: int, rng: random.Random, retry_after_s: float | None = None
    ) -> float:
        """Seconds to wait before retry number ``attempt``; at least ``retry_after_s`` if given."""
        ceiling = self.ceiling_s(attempt)
        delay = ceiling * (1.0 - self.jitter * rng.random())
        if retry_after_s is not None:
            delay = max(delay, _clamp(retry_after_s))
        return delay


class Deadline:
    """A time budget that started when it was made; ``clock`` is injectable for tests."""

    __slots__ = ("budget_s", "clock", "started_at")

    def __init__(self, budget_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget_s = budget_s
        self.clock = clock
        self.started_at = clock()

    def remaining_s(self) -> float:
        return max(0.0, self.budget_s - (self.clock() - self.started_at))

    @property
    def expired(self) -> bool:
        return self.remaining_s() <= 0.0
