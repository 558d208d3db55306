"""Waiting for delivery from the producer's side: flush requests and the sender's doorbell.

Both ``Engine.flush`` and ``Tracer.flush`` wait here until the sender has released (the
server acknowledged, or the sender spooled or dead-lettered) everything written before; they
report True only when nothing was spooled or dead-lettered meanwhile (not delivered).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

from engine import ring
from engine.common._control import Control


def wait_released(ringset: ring.RingSet, control: Control, timeout_s: float,
                  slots: list[int] | None = None, since: int | None = None) -> bool:
    """Wait until every ring's release position passes the head it had on entry; True if
    it did and nothing was spooled or dead-lettered since ``since`` (an earlier
    :func:`unacknowledged`; default: on entry) -- released is not delivered."""
    mark = unacknowledged(control) if since is None else since
    return wait_settled(ringset, control, timeout_s, slots) and unacknowledged(control) == mark


def wait_settled(ringset: ring.RingSet, control: Control, timeout_s: float,
                 slots: list[int] | None = None) -> bool:
    """Wait until every ring's (or ``slots``') release position passes the head it had on
    entry -- acknowledged, spooled or dead-lettered; False only if ``timeout_s`` passed."""
    heads, _ = ringset.positions()
    wanted = range(len(heads)) if slots is None else slots
    control.set("flush_request_ns", time.monotonic_ns())
    ring_doorbell(ringset)
    return _wait(ringset, heads, wanted, time.monotonic() + timeout_s, lambda: None)


def unacknowledged(control: Control) -> int:
    """Items released without the server's acknowledgement so far (spooled, dead-lettered)."""
    return control.get("spooled_items") + control.get("dead_letters")


def wait_heads_released(ringset: ring.RingSet, heads: list[int], deadline_s: float,
                        gone: Callable[[], object]) -> bool:
    """Wait until ``heads`` are released (True), or ``deadline_s``, or until ``gone()``
    (the sender's ``poll``) says the sender exited."""
    return _wait(ringset, heads, range(len(heads)), deadline_s, gone)


def _wait(ringset: ring.RingSet, heads: list[int], wanted: Iterable[int], deadline_s: float,
          gone: Callable[[], object]) -> bool:
    pause_s = 0.0005
    while True:
        _, released = ringset.positions()
        if all(released[i] >= heads[i] for i in wanted):
            return True
        if time.monotonic() >= deadline_s or gone() is not None:
            return False
        time.sleep(min(pause_s, max(0.0, deadline_s - time.monotonic())))
        pause_s = min(pause_s * 2, 0.02)


def ring_doorbell(ringset: ring.RingSet) -> None:
    """Wake every sleeping sender (flush and shutdown requests come outside any ring write)."""
    for shard in range(ringset.spec.senders):
        try:
            fd = os.open(ringset.spec.doorbell_of(shard), os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            continue  # no reader: that sender is not sleeping on it
        try:
            os.write(fd, b"\x01")
        except BlockingIOError:
            pass
        finally:
            os.close(fd)
