"""A store that cannot take a request for now: its disk is full, its database is locked,
its ClickHouse server cannot be reached. The answer names why, says what of the request may
not be stored, and asks to send it again later (``Retry-After``; the engine's sender and
weave's client retry 507 and 503), instead of a bare 500 and a traceback per request. The
log says it at most once every ``SAY_EVERY_S`` per status: an outage of minutes is a few
lines, not thousands.
"""

from __future__ import annotations

import logging
import time
from typing import Any

SAY_EVERY_S = 30.0
RETRY_AFTER_S = 5
_TROUBLE_STATUSES = (503, 507)
_log = logging.getLogger("engine.server")


class StoreTrouble:
    """Answers for one store, each status said in the log at most every ``SAY_EVERY_S``."""

    def __init__(self) -> None:
        self._said_at: dict[int, float] = {}  # status -> when the log may say it again

    def answer(self, status: int, reason: str) -> Any:
        """The :class:`~engine.server._body.ApiError` to raise (``reason`` is said first)."""
        from engine.server._body import ApiError  # lazy, as the stores that call this

        now = time.monotonic()
        if now >= self._said_at.get(status, 0.0):
            self._said_at[status] = now + SAY_EVERY_S
            _log.error("engine serve: %s (answering %d; said at most every %.0f s)", reason,
                       status, SAY_EVERY_S)
        return ApiError(status, reason, {"Retry-After": str(RETRY_AFTER_S)})


def is_trouble(exc: BaseException) -> bool:
    """Whether ``exc`` is such an answer: the store's state, the same for every request."""
    from engine.server._body import ApiError

    return isinstance(exc, ApiError) and exc.status in _TROUBLE_STATUSES
