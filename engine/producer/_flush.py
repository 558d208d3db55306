"""Waiting for delivery from the producer's side: flush requests and the sender's doorbell.

Both ``Engine.flush`` and ``Tracer.flush`` wait here until the sender has released (the
server acknowledged, or the sender spooled or dead-lettered) everything written before.
"""

from __future__ import annotations

import os
import time

from engine import ring
from engine.common._control import Control


def wait_released(ringset: ring.RingSet, control: Control, timeout_s: float,
                  slots: list[int] | None = None) -> bool:
    """Wait until every ring's release position passes the head it had on entry."""
    heads, _ = ringset.positions()
    wanted = range(len(heads)) if slots is None else slots
    control.set("flush_request_ns", time.monotonic_ns())
    ring_doorbell(ringset)
    deadline = time.monotonic() + timeout_s
    pause_s = 0.0005
    while True:
        _, released = ringset.positions()
        if all(released[i] >= heads[i] for i in wanted):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(pause_s, max(0.0, deadline - time.monotonic())))
        pause_s = min(pause_s * 2, 0.02)


def ring_doorbell(ringset: ring.RingSet) -> None:
    """Wake a sleeping sender (flush and shutdown requests come outside any ring write)."""
    try:
        fd = os.open(ringset.spec.doorbell_path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return  # no reader: the sender is not sleeping on it
    try:
        os.write(fd, b"\x01")
    except BlockingIOError:
        pass
    finally:
        os.close(fd)
