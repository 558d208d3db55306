"""The sender's stop deadline (engine/sender/_shutdown.py): a sooner stop the owner asks for
while the sender drains (a second Ctrl-C in close()) is honoured; a request that was already
there when the deadline was set -- a dead owner's, found by a sender recovering its ring set
-- is not news (taking it for one stopped the recovery at once: every recovered call was
dead-lettered and replayed again, 2,995 duplicates instead of 584 in
`python -m bench.guarantees --only disk-full`)."""

import os
import time

from engine.common._config import EngineConfig
from engine.sender._shutdown import Shutdown


class _Control:
    def __init__(self, request_ns: int) -> None:
        self.request_ns = request_ns

    def get(self, name: str) -> int:
        assert name == "shutdown_request"
        return self.request_ns


def _sender(request_ns: int, *, recovering: bool) -> Shutdown:
    sender = Shutdown()
    sender.cfg = EngineConfig(url="http://127.0.0.1:9", project="a/b", shutdown_timeout_s=30.0)
    sender.control = _Control(request_ns)
    sender.recovering = recovering
    sender.owner_pid = os.getpid()
    sender.ringset = type("RingSet", (), {"spec": type("Spec", (), {"shm_name": "rings"})})()
    sender.signalled = None
    sender.stop_deadline_s = None
    sender.stop_request_seen = 0
    sender.owner_stops = False
    return sender


def test_a_dead_owners_old_request_does_not_cut_a_recovery_short():
    stale_ns = int((time.monotonic() - 60) * 1e9)  # its close() asked, a minute ago
    sender = _sender(stale_ns, recovering=True)
    sender._stop_due()
    assert sender.stop_deadline_s > time.monotonic() + 25  # shutdown_timeout_s from now
    until = sender.stop_deadline_s - 1
    assert sender._sooner_stop(until) == until


def test_a_sooner_stop_asked_while_draining_is_honoured():
    sender = _sender(int((time.monotonic() + 30) * 1e9), recovering=False)
    sender._stop_due()  # the owner's close(): 30 s
    until = sender.stop_deadline_s - 1
    assert sender._sooner_stop(until) == until  # the same request: nothing new
    now_ns = int(time.monotonic() * 1e9)
    sender.control.request_ns = now_ns  # a second Ctrl-C: persist now
    assert sender._sooner_stop(until) == now_ns / 1e9 == sender.stop_deadline_s
    later = int((time.monotonic() + 60) * 1e9)
    sender.control.request_ns = later  # a later one never puts it off
    assert sender._sooner_stop(now_ns / 1e9) == now_ns / 1e9
