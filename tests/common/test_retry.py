import random

import pytest

from engine.common._retry import (
    MAX_RETRY_AFTER_S,
    Backoff,
    Deadline,
    Verdict,
    classify,
    retry_after_s,
)

COMPLETE_MODE_BODY = b'{"error_code":"CALLS_COMPLETE_MODE_REQUIRED","reason":"use calls/complete"}'


@pytest.mark.parametrize(
    ("status", "body", "verdict"),
    [
        (200, b"{}", Verdict.OK),
        (201, b"", Verdict.OK),
        (204, b"", Verdict.OK),
        (200, b'{"res":[]}', Verdict.OK),
        (200, b"null", Verdict.OK),
        (200, b"\n  <!DOCTYPE html><html>sign in</html>", Verdict.DEAD),  # a proxy's page
        (200, b"<?xml version='1.0'?><error/>", Verdict.DEAD),
        (413, b"", Verdict.SPLIT_413),
        (422, b'{"reason":"bad item"}', Verdict.SPLIT_422),
        (400, COMPLETE_MODE_BODY, Verdict.COMPLETE_MODE_REQUIRED),
        (400, b'{"error_code":"SOMETHING_ELSE"}', Verdict.DEAD),
        (400, b'{"detail":{"error_code":"CALLS_COMPLETE_MODE_REQUIRED"}}', Verdict.DEAD),
        (400, b"not json", Verdict.DEAD),
        (400, b'["CALLS_COMPLETE_MODE_REQUIRED"]', Verdict.DEAD),
        (401, b"", Verdict.DEAD),
        (403, b"", Verdict.DEAD),
        (404, b"", Verdict.DEAD),
        (408, b"", Verdict.RETRY),
        (409, b"", Verdict.RETRY),
        (429, b"", Verdict.RETRY),
        (500, b"", Verdict.RETRY),
        (502, b"", Verdict.RETRY),
        (503, b"", Verdict.RETRY),
        (504, b"", Verdict.RETRY),
        (501, b"<html>Unsupported method ('POST')</html>", Verdict.DEAD),  # never will
        (505, b"", Verdict.DEAD),
    ],
)
def test_classify_maps_status_and_body_to_verdict(status, body, verdict):
    assert classify(status, body) is verdict


def test_classify_retries_when_no_answer_came():
    assert classify(None, exc=TimeoutError()) is Verdict.RETRY
    assert classify(None, exc=ConnectionResetError()) is Verdict.RETRY
    assert classify(None) is Verdict.RETRY


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after": " 2.5 "}, 2.5),
        ({"Retry-After-Ms": "250"}, 0.25),
        ({"Retry-After": "9", "retry-after-ms": "1500"}, 1.5),
        ({"Retry-After": "-4"}, 0.0),
        ({"Retry-After": "1e9"}, MAX_RETRY_AFTER_S),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "inf"}, None),
        ({"Retry-After": ""}, None),
        ({"Retry-After-ms": "garbage"}, None),
        ({}, None),
    ],
)
def test_retry_after_parses_seconds_and_millis_and_rejects_garbage(headers, expected):
    assert retry_after_s(headers) == expected


def test_retry_after_http_date_is_relative_to_now():
    now = 1_445_412_470.0  # 2015-10-21 07:27:50 UTC
    assert retry_after_s({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=now) == 10.0
    assert retry_after_s({"Retry-After": "Wed, 21 Oct 2015 07:28:00 -0000"}, now=now) == 10.0


def test_retry_after_date_in_the_past_means_now():
    assert retry_after_s({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=2e9) == 0.0


def test_backoff_grows_exponentially_within_jitter_bounds():
    backoff = Backoff(initial_ms=100, max_ms=10_000, multiplier=2.0, jitter=0.5)
    rng = random.Random(7)
    for attempt in range(1, 40):
        ceiling = min(0.1 * 2 ** (attempt - 1), 10.0)
        for _ in range(50):
            assert ceiling * 0.5 <= backoff.delay_s(attempt, rng) <= ceiling


def test_backoff_caps_at_max_even_for_huge_attempt_counts():
    assert Backoff(max_ms=2_000).ceiling_s(10_000) == 2.0


def test_backoff_without_jitter_is_deterministic():
    backoff = Backoff(initial_ms=50, jitter=0.0)
    assert [backoff.delay_s(n, random.Random(1)) for n in (1, 2, 3)] == [0.05, 0.1, 0.2]


def test_backoff_same_seed_same_delays():
    backoff = Backoff()
    first = [backoff.delay_s(n, random.Random(3)) for n in range(1, 10)]
    assert first == [backoff.delay_s(n, random.Random(3)) for n in range(1, 10)]


def test_backoff_honours_retry_after_as_a_floor():
    backoff = Backoff(initial_ms=100, max_ms=1_000)
    rng = random.Random(0)
    assert backoff.delay_s(1, rng, retry_after_s=30.0) == 30.0
    assert backoff.delay_s(1, rng, retry_after_s=1e6) == MAX_RETRY_AFTER_S
    assert 0.05 <= backoff.delay_s(1, rng, retry_after_s=0.0) <= 0.1


@pytest.mark.parametrize(
    "kwargs",
    [{"initial_ms": 0}, {"initial_ms": 20, "max_ms": 10}, {"multiplier": 0.5}, {"jitter": 1.5}],
)
def test_backoff_rejects_nonsense_settings(kwargs):
    with pytest.raises(ValueError):
        Backoff(**kwargs)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_deadline_counts_down_on_the_injected_clock():
    clock = FakeClock()
    deadline = Deadline(5.0, clock=clock)
    assert deadline.remaining_s() == 5.0 and not deadline.expired
    clock.now += 3.0
    assert deadline.remaining_s() == 2.0
    clock.now += 2.0
    assert deadline.remaining_s() == 0.0 and deadline.expired
    clock.now += 100.0
    assert deadline.remaining_s() == 0.0
