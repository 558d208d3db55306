"""Hand decoded call items to the engine's tracer from one dedicated thread.

A ring slot has exactly one producer, so every write goes through the same thread; the
event loop never blocks on a full ring (the tracer waits up to ``max_block_ms`` there), so
proxied routes keep flowing while ingest applies backpressure.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from engine.producer._tracer import Tracer
from engine.wire.calls import (
    CompletedCallSchemaForInsert,
    EndedCallSchemaForInsert,
    StartedCallSchemaForInsert,
)

CallItem = StartedCallSchemaForInsert | EndedCallSchemaForInsert | CompletedCallSchemaForInsert


class RingWriter:
    """``await writer.write(items)`` returns once every item is in the ring (or raised)."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-ring-writer")

    async def write(self, items: list[CallItem]) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self._write_all, items)

    def _write_all(self, items: list[CallItem]) -> None:
        tracer = self._tracer
        for item in items:
            if isinstance(item, CompletedCallSchemaForInsert):
                tracer.call_complete(item)
            elif isinstance(item, StartedCallSchemaForInsert):
                tracer.call_start(item)
            else:
                tracer.call_end(item)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._tracer.close()
