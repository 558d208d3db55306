"""The sender says when producers wait on full rings (engine/sender/_pressure.py): unit
tests with an injected clock, and one through a real owner process whose server answers
late (its sender's stderr is read)."""

import json
import logging
import re
import subprocess
import sys
import textwrap

import pytest

from engine.sender._pressure import PressureLog, bound_facts
from tests.faultserver import FaultServer
from tests.pipeline import bare_env


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _log(clock: _Clock, **kw) -> PressureLog:
    return PressureLog("http://srv", clock=clock, **{"min_blocked_s": 1.0, **kw})


def test_nothing_is_said_until_producers_waited_min_blocked_s(caplog):
    clock = _Clock()
    log = _log(clock)
    caplog.set_level(logging.WARNING, "engine.sender")
    assert not log.observe(0, 0, lambda: "facts")  # the first look only marks
    clock.now += 5
    assert not log.observe(900, 0, lambda: "facts")
    clock.now += 1
    assert log.observe(1_400, 0, lambda: "facts")
    assert len(caplog.messages) == 1
    assert caplog.messages[0].startswith("producers waited 1.4 s in all for ring space since ")
    assert caplog.messages[0].endswith(": calls are made faster than http://srv acknowledges "
                                       "them (facts)")


def test_at_most_one_line_every_every_s_each_saying_what_came_since_the_last():
    clock = _Clock()
    log = _log(clock, every_s=30)
    log.observe(0, 0, str)
    clock.now += 2
    assert log.observe(2_000, 0, lambda: "")
    for step in range(29):  # 29 s later: still inside the 30 s
        clock.now += 1
        assert not log.observe(2_000 + 1_000 * (step + 1), 0, lambda: "")
    clock.now += 1
    said = []
    assert log.observe(40_000, 0, lambda: said.append(1) or "")
    assert said == [1] and log.lines == 2 and log.mark == (40_000, 0, clock.now)


def test_a_dropped_call_is_said_at_once(caplog):
    clock = _Clock()
    log = _log(clock)
    caplog.set_level(logging.WARNING, "engine.sender")
    log.observe(0, 0, str)
    clock.now += 3
    assert log.observe(0, 12, lambda: "f")
    assert caplog.messages[0].startswith("12 calls were dropped on full rings (on_full='drop', or "
                                         "waiting for room as the engine closed) "
                                         "since ")


def test_waits_older_than_every_s_are_not_added_up():
    clock = _Clock()
    log = _log(clock, every_s=30)
    log.observe(0, 0, str)
    for step in range(10):  # 0.5 s of waiting every 31 s: never a second in one window
        clock.now += 31
        assert not log.observe(500 * (step + 1), 0, str)


def test_the_facts_name_the_rings_bound_at_this_round_trip():
    text = bound_facts(300.0, 8, 4 << 20, 2, 16 << 20)
    assert text.startswith("round trip ~300 ms, up to 8 POSTs in flight, bodies up to 4.0 MiB; "
                           "records stay in the rings until acknowledged, so at most their "
                           "32 MiB (2 producers x ring_bytes 16 MiB) are in flight: at most "
                           "~107 MiB/s at this round trip")
    assert "a larger ring_bytes carries more" in text
    assert "not measured yet" in bound_facts(None, 4, 1 << 20, 1, 16 << 20)
    assert "went as requests of their own" not in text
    # records queued behind busy POSTs wait longer than a POST takes: the bound divides by
    # the wait, and the round trip stays the POST's (a 50 ms server is not called 244 ms away)
    queued = bound_facts(50.0, 8, 2 << 20, 1, 16 << 20, wait_ms=244.0)
    assert queued.startswith("round trip ~50 ms (a record waits ~244 ms from its write to its "
                             "acknowledgement), up to 8 POSTs in flight")
    assert ": at most ~66 MiB/s at this wait;" in queued
    assert "a record waits" not in bound_facts(50.0, 8, 2 << 20, 1, 16 << 20, wait_ms=60.0)
    pinned = bound_facts(20.0, 8, 4 << 20, 1, 16 << 20, pinned_alone=12_345)
    assert "; 12,345 starts of calls still open went as requests of their own" in pinned
    assert "a larger ring_bytes keeps them until their ends" in pinned


_OWNER = textwrap.dedent("""
    import json, sys, time
    from engine.producer._engine import Engine
    from tests.engine.helpers import trace_calls
    with Engine(url=sys.argv[1], project="ops/pressure", ring_bytes=1 << 20,
                shutdown_timeout_s=30.0) as eng:
        tracer = eng.producer()
        written, stop = 0, time.monotonic() + 8  # past the 5 s of waiting said
        while time.monotonic() < stop:  # bounded in time and count
            trace_calls(tracer, 50, prefix=f"c{written}", payload_bytes=4000)
            written += 50
            if written >= 40_000:
                break
        flushed = eng.flush(timeout_s=60)
        print(json.dumps({"written": written, "flushed": flushed}))
""")


@pytest.mark.integration
def test_producers_waiting_on_a_late_server_are_said_while_it_goes_on():
    """1 MiB rings toward a server answering 0.3 s late: ~3 MiB/s in flight at most, while
    the producer could write far more. The sender says so during the run (once producers
    waited 5 s in all), with the bound."""
    with FaultServer(stall_s=0.3) as fault:
        result = subprocess.run([sys.executable, "-c", _OWNER, fault.url], capture_output=True,
                                text=True, timeout=180,
                                env=bare_env())  # fmt: skip
        stored = len(fault.stored)
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.splitlines()[-1])
    assert outcome["flushed"] and stored == 2 * outcome["written"]  # a root and a child each
    said = [line for line in result.stderr.splitlines() if "for ring space" in line]
    assert said, result.stderr[-3000:]
    assert f"calls are made faster than {fault.url} acknowledges them" in said[0]
    assert "(1 producer x ring_bytes 1 MiB) are in flight" in said[0]
    trip = re.search(r"round trip ~(\d+) ms", said[0])
    assert trip and int(trip.group(1)) >= 300, said[0]  # the server's 0.3 s, measured
    assert "a larger ring_bytes carries more" in said[0]


_OPEN_OWNER = textwrap.dedent("""
    import asyncio, json, sys
    from engine.producer._engine import Engine
    from tests.engine.helpers import sliding_open_calls

    with Engine(url=sys.argv[1], project="ops/open", ring_bytes=256 << 10,
                eager_start_ms=600_000, shutdown_timeout_s=30.0) as eng:
        # 400 open at any time (~0.8 MB, past half the ring), for 8 s: past the 5 s of
        # waiting said; bounded in count too
        made = asyncio.run(sliding_open_calls(eng.producer(), 20_000, 400, prompt_bytes=2000,
                                              for_s=8))
        print(json.dumps({"made": made, "flushed": eng.flush(timeout_s=120),
                          "eager_starts": eng.stats()["eager_starts"]}))
""")



@pytest.mark.integration
def test_starts_of_open_calls_sent_alone_for_their_ring_s_space_are_said_with_the_remedy():
    """400 calls open at a time through 256 KiB rings toward a server without upsert
    batches (weave's), 50 ms away: their starts fill half the ring and go as v2 requests
    of their own, two requests a call where one complete call would do, and producers
    wait. The warning names them and ring_bytes (a larger ring keeps them paired: 20,000
    calls, 10,000 open, 20 ms away: producing 14.9 s with 16 MiB, 4.3 with 32)."""
    with FaultServer(stall_s=0.05) as fault:
        result = subprocess.run([sys.executable, "-c", _OPEN_OWNER, fault.url],
                                capture_output=True, text=True, timeout=180,
                                env=bare_env())  # fmt: skip
        singles = len(fault.records("/call/start"))
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.splitlines()[-1])
    assert outcome["flushed"] and outcome["eager_starts"] == singles > 0
    said = [line for line in result.stderr.splitlines() if "for ring space" in line]
    assert said, result.stderr[-3000:]
    alone = re.search(r"; ([\d,]+) starts of calls still open went as requests of their own "
                      r"\(their ends as more\) because open calls filled half of their ring: "
                      r"a larger ring_bytes keeps them until their ends", said[0])
    assert alone and 0 < int(alone.group(1).replace(",", "")) <= singles, said[0]


def test_by_default_five_seconds_of_waiting_are_news_and_a_start_up_hiccup_is_not():
    clock = _Clock()
    log = PressureLog("http://srv", clock=clock)
    log.observe(0, 0, str)
    clock.now += 2
    assert not log.observe(4_900, 0, str)  # e.g. 2 producers, the first seconds of a store
    clock.now += 1
    assert log.observe(5_100, 0, str)
