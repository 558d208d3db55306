"""Hand decoded call items to the engine's tracer from one dedicated thread.

Items are the server's raw ingest models: their JSON-valued fields are the client's bytes,
written into the ring as they came (``Tracer.enqueue``), never built into Python objects.

A ring slot has exactly one producer, so every write goes through the same thread; the
event loop never blocks on a full ring (the tracer waits up to ``max_block_ms`` there), so
proxied routes keep flowing while ingest applies backpressure.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from engine.producer._tracer import Tracer
from engine.server._ingest_models import RawCompletedCall, RawEndedCall, RawStartedCall

CallItem = RawStartedCall | RawEndedCall | RawCompletedCall


class RingWriter:
    """``await writer.write(items)`` returns once every item is in the ring (or raised)."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-ring-writer")

    async def write(self, items: list[CallItem]) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self._write_all, items)

    def _write_all(self, items: list[CallItem]) -> None:
        enqueue = self._tracer.enqueue
        for item in items:
            enqueue(mode_of(item), item)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._tracer.close()


def mode_of(item: CallItem) -> str:
    """``start``, ``end`` or ``complete``: what ``Tracer.enqueue`` writes the item as."""
    if type(item) is RawCompletedCall:
        return "complete"
    return "start" if type(item) is RawStartedCall else "end"
