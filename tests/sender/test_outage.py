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


def test_a_silent_server_is_failing_from_its_last_answer_once_said_until_it_answers(caplog):
    """Requests in flight and no answer: the outage starts where the silence began (the
    spill measures from there), one line names the last answer, and an answer ends it."""
    clock = _Clock()
    outage = OutageLog("http://h:1", "a batch goes to the spool /s", every_s=30, clock=clock)
    with caplog.at_level(logging.WARNING, logger="engine.sender"):
        clock.now_s = 120.0
        outage.silent(104.0, 100.0, 3, lambda: 7)
        assert outage.since_s == 104.0
        clock.now_s += 5
        outage.silent(104.0, 100.0, 3, lambda: 8)  # within every_s: quiet
        outage.failed("no answer", lambda: 9)  # a request's own timeout: the same outage
        assert outage.since_s == 104.0
        outage.succeeded()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "has answered nothing since" in lines[0] and "(20 s) with 3 requests in flight" in lines[0]
    assert "7 items waiting" in lines[0] and "/s" in lines[0]
    assert "answering again after 21 s and 1 failed requests" in lines[1]
    assert outage.since_s is None


def test_startup_problems_name_the_cause():
    level, text = startup_problem(HTTPError(404, "nf", url="http://h/x/server_info"))
    assert level == logging.ERROR and "wrong path?" in text and "http://h/x/server_info" in text
    level, text = startup_problem(HTTPError(401, "no", url="http://h/server_info"))
    assert level == logging.ERROR and "needs an API key" in text and "$ENGINE_API_KEY" in text
    level, text = startup_problem(HTTPError(403, "no", url="http://h/server_info"), url="http://h",
                                  has_key=True, key_from="$WANDB_API_KEY")
    assert text.startswith("http://h refused the API key from $WANDB_API_KEY (HTTP 403)")
    level, text = startup_problem(HTTPError(401, "no"), url="http://api:SECRET@h", has_key=True)
    assert "refused the key in the URL" in text and "SECRET" not in text
    level, text = startup_problem(SendError("connection refused", retriable=True))
    assert level == logging.WARNING and "retried" in text


def test_a_failure_names_the_servers_reason_when_it_gave_one():
    from engine.sender._outage import failure_text

    assert failure_text(507, None, "the store's disk is full") == \
        "HTTP 507: the store's disk is full"
    assert failure_text(503, None) == "HTTP 503"
    assert failure_text(None, OSError("connection refused")) == "connection refused"
    assert failure_text(None, None) == "no answer"


def test_a_failure_is_one_line_of_bounded_length():
    from engine.sender._outage import failure_text

    page = ("<!DOCTYPE HTML>\n<html>\n    <head>\n        <title>Error response</title>\n"
            "    </head>\n    <body>\n" + "        <p>Message: Unsupported method.</p>\n" * 20)
    text = failure_text(501, None, page)
    assert "\n" not in text and "  " not in text
    assert text.startswith("HTTP 501: <!DOCTYPE HTML> <html> <head> <title>Error response")
    assert len(text) <= 301 and text.endswith("…")
    assert failure_text(None, OSError("refused\n  twice")) == "refused twice"


def test_the_exit_line_names_every_kind_of_call_the_producers_dropped():
    from engine.common._control import SENDER_FIELDS, SLOT_FIELDS
    from engine.sender._report import exit_line

    stats = dict.fromkeys(SENDER_FIELDS, 0) | {"items_acked": 90, "untraced_no_shared_memory": 4}
    producers = dict.fromkeys(SLOT_FIELDS, 0) | {"dropped_full": 2, "wrapper_dropped": 3}
    level, line = exit_line(stats, producers, url="http://h:1", dead_path="/d", spool_dir=None,
                            kept_records=0, ring_name="r")
    assert level == logging.WARNING
    assert "2 ring full (on_full='drop', or waiting for room as the engine closed)" in line
    assert "3 calls op wrappers could not write" in line
    assert "4 calls of processes that found no room in /dev/shm" in line
    level, line = exit_line(dict.fromkeys(SENDER_FIELDS, 0) | {"items_acked": 5},
                            dict.fromkeys(SLOT_FIELDS, 0), url="http://h:1", dead_path="/d",
                            spool_dir=None, kept_records=0, ring_name="r")
    assert level == logging.INFO and line.endswith("dropped: none")
