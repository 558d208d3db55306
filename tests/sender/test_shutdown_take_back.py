"""At the stop deadline the sender takes back the batches of its POSTs in flight and of its
waits before a retry, to persist them (engine/sender/_shutdown.py, ``Shutdown._take_back``).
A POST whose answer was settled as the deadline came (its task done, the callback that drops
it from ``tasks`` not yet run) is not taken back: its batch was acknowledged, or waits for a
retry and is taken back from there, once. Found by tests/engine/test_chaos.py, seed 6 (the
server down at close: 4 items of 2,649 counted both delivered or dead-lettered, and
dead-lettered again)."""

import asyncio
import collections

import pytest

from engine.sender._shutdown import Shutdown
from tests.faultserver import LOOP_NAMES, run_on


async def _take_back_after(answer: str) -> list[str]:
    """Two POSTs in flight as the sender stops: one answered (``answer``: "ack", or "retry":
    its batch now waits to be sent again), its task's callbacks not yet run; one still
    waiting for its answer. The batches taken back, in the ready queue's order."""
    sender = Shutdown()
    sender.ready, sender.waiting, sender.tasks = collections.deque(), {}, {}
    sender.silence_probe = None  # no silent server probed (engine/sender/_delivery.py)
    loop = asyncio.get_running_loop()

    async def answered() -> None:
        if answer == "retry":
            sender.waiting["answered"] = loop.call_later(60, lambda: None)

    async def unanswered() -> None:
        await asyncio.Event().wait()

    for batch, coro in (("answered", answered()), ("unanswered", unanswered())):
        task = loop.create_task(coro)
        sender.tasks[task] = batch
        task.add_done_callback(lambda done: sender.tasks.pop(done, None))
    await asyncio.sleep(0)  # the answered task ran to its end; its callback is due next
    assert len(sender.tasks) == 2 and sum(task.done() for task in sender.tasks) == 1
    await sender._take_back()
    return list(sender.ready)


@pytest.mark.parametrize("loop_name", LOOP_NAMES)
@pytest.mark.parametrize("answer", ["ack", "retry"])
def test_a_post_answered_as_the_sender_stops_is_not_taken_back_to_be_persisted_again(
        loop_name, answer):
    taken = run_on(loop_name, _take_back_after(answer))
    # before: the answered batch was taken back from the tasks too (acknowledged, then
    # persisted; or persisted twice, from the tasks and from the waits)
    expected = ["unanswered"] if answer == "ack" else ["answered", "unanswered"]
    assert sorted(taken) == expected
