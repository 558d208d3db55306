"""What ``engine serve`` refuses to take in, so that everything it stores reads back.

- **Nesting depth**: a body nested more than :data:`MAX_JSON_DEPTH` levels is a 422.
  msgspec gives up near 1,000 levels (a RecursionError, depending on the stack it runs
  on), and Python's ``json`` in a client reading the value back gives up at about the same
  depth minus its own stack: a value stored at 990 levels would break every reader.
- **Timestamps** must be representable as a UTC datetime (years 1 to 9999 once the offset
  is applied): ``0001-01-01T00:00:00+01:00`` is year 0 in UTC, and a row holding it made
  every later read of its project fail.
- **Integers** that SQLite stores as columns are 64-bit signed (:data:`Int64`).
"""

from __future__ import annotations

import datetime as _dt
from typing import Annotated

import msgspec

from engine.wire._depth import json_depth_over, json_depth_over_py  # noqa: F401 (theirs too)

MAX_JSON_DEPTH = 256
DEFAULT_MAX_CONNECTIONS = 512  # open connections served at once by serve and relay
# how long serve's stop waits for the requests in progress before it cancels them (aiohttp's default)
DEFAULT_SHUTDOWN_TIMEOUT_S = 60.0
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
NonNegativeInt64 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
MIN_TIME_US = (_dt.datetime.min.replace(tzinfo=_dt.timezone.utc) - _EPOCH) // _dt.timedelta(microseconds=1)
MAX_TIME_US = (_dt.datetime.max.replace(tzinfo=_dt.timezone.utc) - _EPOCH) // _dt.timedelta(microseconds=1)


class LimitExceeded(ValueError):
    """A value past one of the limits above; the message names the limit."""


def check_json_depth(body: bytes) -> None:
    if json_depth_over(body, MAX_JSON_DEPTH):
        raise LimitExceeded(f"request body: JSON nested more than {MAX_JSON_DEPTH} levels deep")


def time_us(value: _dt.datetime, field: str) -> int:
    """``value`` as microseconds since the epoch (naive means UTC), or :class:`LimitExceeded`."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.timezone.utc)
    us = (value - _EPOCH) // _dt.timedelta(microseconds=1)
    if not MIN_TIME_US <= us <= MAX_TIME_US:
        raise LimitExceeded(f"{field}: {value.isoformat()} is outside 0001-01-01..9999-12-31 in UTC")
    return us


def check_time(value: _dt.datetime | None, field: str) -> None:
    # a time in UTC is one a UTC datetime holds: only another offset can push it out
    if value is not None and value.tzinfo is not _dt.timezone.utc:
        time_us(value, field)
