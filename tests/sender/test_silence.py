"""A server that answers nothing counts as failing once requests are in flight and nothing
was answered for ``silent_after_s`` (engine/sender/_delivery.py, ``_notice_silence``). The
silence is counted from the last answer, or from when the oldest request in flight went
out: a request dispatched after a quiet spell (the program traced nothing for a while) is
not a silence of that spell's length."""

import asyncio
import collections
import time

import pytest

from engine.common._config import EngineConfig
from engine.sender._batcher import Batch, Item
from engine.sender._delivery import Delivery
from engine.sender._outage import OutageLog
from engine.sender._transport import Response
from tests.faultserver import LOOP_NAMES, run_on

_SILENT_AFTER_S = 15.0
_ROUTE = "/call/upsert_batch"


class _Limits:
    limit = 4  # the concurrency's
    bytes = 1 << 20  # the size target's
    probing_bytes = None
    probe_upsert = False  # the router's


def _sender(last_answer_ago_s: float) -> Delivery:
    """A Delivery whose last answer came ``last_answer_ago_s`` ago; its POSTs never end."""
    sender = Delivery()
    sender.cfg = EngineConfig(silent_after_s=_SILENT_AFTER_S)
    sender.tasks, sender.single_tasks, sender.taken_back = {}, set(), set()
    sender.ready = collections.deque()
    sender.concurrency = sender.size = sender.router = _Limits()
    sender.wake = asyncio.Event()
    sender.outage = OutageLog("http://127.0.0.1:1", "the dead letters")
    sender.last_answer_s = time.monotonic() - last_answer_ago_s
    sender.slowest_answer_s, sender.silent, sender.last_retry_status = 0.0, False, None
    sender.stopping, sender.fatal = False, None
    sender._waiting_items = lambda: 1
    sender._deliver = lambda batch: asyncio.Event().wait()
    return sender


def _batch(sent_ago_s: float | None) -> Batch:
    """A batch of one item, never sent (None), or last sent ``sent_ago_s`` ago (its retry)."""
    item = Item((b"{}", b","), 2, (), _ROUTE, False, b"id", b"p", b"", 0, True, 1, b"")
    batch = Batch(_ROUTE, [item], target_bytes=1 << 20)
    if sent_ago_s is not None:
        batch.attempts, batch.sent_s = 1, time.monotonic() - sent_ago_s
        batch.first_sent_s = batch.sent_s
    return batch


async def _silent_after_dispatch(sent_ago_s: float | None) -> tuple[bool, bool]:
    """A batch dispatched 20 s after the last answer, before its request goes out (its task
    not started, or compressing); whether that is a silence, then whether it is once the
    request has been unanswered past silent_after_s."""
    sender = _sender(last_answer_ago_s=20.0)
    sender.ready.append(_batch(sent_ago_s))
    sender._dispatch()
    try:
        (task, batch), = sender.tasks.items()
        assert not task.done()
        sender._notice_silence()
        at_dispatch = sender.silent
        batch.sent_s = time.monotonic() - _SILENT_AFTER_S - 1
        sender._notice_silence()
        return at_dispatch, sender.silent
    finally:
        for task in sender.tasks:
            task.cancel()
        await asyncio.gather(*sender.tasks, return_exceptions=True)


@pytest.mark.parametrize("loop_name", LOOP_NAMES)
@pytest.mark.parametrize("sent_ago_s", [None, 18.0], ids=["first-attempt", "retry"])
def test_a_request_dispatched_after_a_quiet_spell_is_not_a_silence(loop_name, sent_ago_s):
    # before: its batch's sent_s (0.0, never sent; or its last attempt's) was taken for the
    # request's: the 20 s quiet spell counted as a silence at once, the outage began 20 s
    # back (past SPILL_AFTER_S), and with producers waiting the spill persisted what was
    # queued and took the request back before it went out
    at_dispatch, later = run_on(loop_name, _silent_after_dispatch(sent_ago_s))
    assert not at_dispatch
    assert later  # unanswered past silent_after_s: now it is one


def test_an_answer_held_through_a_silence_does_not_lengthen_the_next_silences_wait():
    """An answer that comes while the server is silent (a held request let go after 40 s)
    ends the silence but is no measure of the server's pace: before, its 40 s became the
    slowest answer, and the next silence waited 3 x 40 s before the spill. An answer that
    comes while the server is not silent still raises the slowest answer."""
    sender = _sender(last_answer_ago_s=20.0)
    sender.silent = True
    sender._heard(Response(200, {}, b"{}", rtt_s=40.0))
    assert not sender.silent and sender.slowest_answer_s == 0.0
    assert sender._silent_after_s() == _SILENT_AFTER_S
    sender._heard(Response(200, {}, b"{}", rtt_s=6.0))
    assert sender.slowest_answer_s == 6.0 and sender._silent_after_s() == 18.0
