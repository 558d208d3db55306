"""The outage log: at once on the first failure, then at most once per period, then a line
when the server answers again (an injected clock, no sleeps)."""

import logging

from engine.common._errors import HTTPError, SendError
from engine.sender._outage import OutageLog, startup_problem


class _Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def test_warns_at_once_then_once_per_period_then_says_it_is_back(caplog):
    clock = _Clock()
    outage = OutageLog("http://h:1", "a batch goes to the spool /s", every_s=30, clock=clock)
    with caplog.at_level(logging.WARNING, logger="engine.sender"):
        outage.failed("HTTP 503", lambda: 42)
        for _ in range(10):
            clock.now_s += 2
            outage.failed("HTTP 503", lambda: 43)
        clock.now_s += 15
        outage.failed("connection refused", lambda: 44)
        outage.succeeded()
        outage.succeeded()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert "failing since" in lines[0] and "42 items waiting" in lines[0]
    assert "/s" in lines[0] and "HTTP 503" in lines[0]
    assert "(35 s, 12 failed requests; last: connection refused); 44 items" in lines[1]
    assert "answering again after 35 s and 12 failed requests" in lines[2]


def test_startup_problems_name_the_cause():
    level, text = startup_problem(HTTPError(404, "nf", url="http://h/x/server_info"))
    assert level == logging.ERROR and "wrong path?" in text and "http://h/x/server_info" in text
    level, text = startup_problem(HTTPError(401, "no", url="http://h/server_info"))
    assert level == logging.ERROR and "API key" in text
    level, text = startup_problem(SendError("connection refused", retriable=True))
    assert level == logging.WARNING and "retried" in text
