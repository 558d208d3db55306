"""No silent outages: what the sender says while the server is unreachable or rejecting.

Retries are quiet by design (one 503 in a storm is normal), so without this an operator sees
nothing while calls pile up. The first failure after a success is logged at once, then at
most one line every ``every_s`` while failures go on, each saying what fails, since when,
how many items are waiting and where they will go; the first success after that says the
server is back. The start-up look at ``/server_info`` (``startup_problem``) turns a wrong
URL or key into one loud line before any call is sent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from engine.common._auth import key_refused, url_credentials
from engine.common._errors import HTTPError, SendError
from engine.common._redact import redact_url

log = logging.getLogger("engine.sender")

DEFAULT_EVERY_S = 30.0


class OutageLog:
    """Rate-limited warnings about a failing server (``clock`` in seconds, injectable)."""

    def __init__(self, url: str, destination: str, every_s: float = DEFAULT_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = redact_url(url)
        self.destination = destination  # where a batch goes once its deadline passes
        self.every_s = every_s
        self.clock = clock
        self.since_s: float | None = None  # start of the current outage
        self.since_wall: float | None = None
        self.failures = 0
        self.next_warning_s = 0.0

    def failed(self, what: str, waiting_items: Callable[[], int]) -> None:
        """A request got no answer, or an answer that means retry later."""
        now = self.clock()
        if self.since_s is None:
            self.since_s, self.since_wall, self.failures = now, time.time(), 0
            self.next_warning_s = now
        self.failures += 1
        if now < self.next_warning_s:
            return
        self.next_warning_s = now + self.every_s
        since = time.strftime("%H:%M:%S", time.localtime(self.since_wall))
        log.warning("server %s failing since %s (%.0f s, %d failed requests; last: %s); "
                    "%d items waiting, retried with backoff; %s",
                    self.url, since, now - self.since_s, self.failures, what, waiting_items(),
                    self.destination)

    def silent(self, since_s: float, last_answer_s: float, in_flight: int,
               waiting_items: Callable[[], int]) -> None:
        """Requests in flight and no answer of any kind since ``since_s`` (``clock()``'s; the
        last answer, or the oldest request's send if later): failing, from then on."""
        now = self.clock()
        if self.since_s is None:
            self.since_s, self.failures = since_s, 0
            self.since_wall = time.time() - (now - since_s)
            self.next_warning_s = now
        if now < self.next_warning_s:
            return
        self.next_warning_s = now + self.every_s
        last = time.strftime("%H:%M:%S", time.localtime(time.time() - (now - last_answer_s)))
        log.warning("server %s has answered nothing since %s (%.0f s) with %d requests in "
                    "flight: taken as failing; %d items waiting; %s", self.url, last,
                    now - last_answer_s, in_flight, waiting_items(), self.destination)

    def succeeded(self) -> None:
        if self.since_s is None:
            return
        log.warning("server %s answering again after %.0f s and %d failed requests; delivering",
                    self.url, self.clock() - self.since_s, self.failures)
        self.since_s = None


_FAILURE_MAX_CHARS = 300


def failure_text(status: int | None, error: BaseException | None, reason: str = "") -> str:
    """``HTTP 507: <the server's reason>``, the error, or "no answer": on one line (a server's
    HTML error page is many) and at most about ``_FAILURE_MAX_CHARS``."""
    if status is not None:
        text = f"HTTP {status}: {reason}" if reason.strip() else f"HTTP {status}"
    else:
        text = str(error) if error is not None else "no answer"
    text = " ".join(text.split())
    return text if len(text) <= _FAILURE_MAX_CHARS else text[:_FAILURE_MAX_CHARS] + "…"


def startup_problem(error: SendError, *, url: str = "", has_key: bool = False,
                    key_from: str = "$ENGINE_API_KEY or $WANDB_API_KEY") -> tuple[int, str]:
    """(log level, message) for a failed ``GET /server_info`` at start (``url``: the
    configured one, credentials and all; ``key_from``: where the owner took the key)."""
    if isinstance(error, HTTPError) and error.status == 404:
        return logging.ERROR, (f"{error.url} answered 404: the url setting is not the base URL "
                               "of a trace server (wrong path?); calls sent there will fail "
                               "and be dead-lettered; `engine doctor URL` checks a URL")
    if isinstance(error, HTTPError) and error.status in (401, 403):
        in_url = url_credentials(url)[1] is not None if url else False
        return logging.ERROR, (key_refused(redact_url(url) if url else error.url, error.status,
                                           in_url=in_url, has_key=has_key, key_from=key_from)
                               + "; calls sent there will be dead-lettered")
    if error.retriable:
        return logging.WARNING, (f"cannot reach the trace server yet ({error}); calls wait in "
                                 "the rings and are retried until it answers")
    return logging.ERROR, f"the trace server's /server_info failed: {error}"
