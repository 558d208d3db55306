"""Group commit of call batches, for both stores: requests that arrive while an insert is
running go in together (one larger ``INSERT`` into ClickHouse, one SQLite transaction,
whose commit then writes each index page it touched once for all of them).

Each ClickHouse ``INSERT`` costs ClickHouse a fixed ~25-35 ms of CPU (analysing the statement that
parses the batch, writing a new part of 25 columns, merging it later) on top of ~5 µs per
call. A sender's 2 MB body holds ~2,500 small calls: inserted alone, that fixed cost is
~13 µs of a call's ~19 µs (chDB, this box); inserts of 50,000 calls cost ~5 µs per call.

A batch is sent at once when a lane is free (no added latency on a quiet server); under
load the batches waiting for a lane are taken together, up to :data:`MAX_PARTS` parts. If
a combined insert fails, each of its batches is inserted again alone, so a batch that
ClickHouse refuses fails only its own request -- unless the error is the store's, not a
batch's (ClickHouse cannot be reached, its disk is full): then every batch of the group gets
it at once, and a struggling ClickHouse is not sent each batch again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

Batch = tuple[list[Any], list[Any], list[Any]]  # starts, ends, completes
Insert = Callable[[list[Batch]], Awaitable[None]]
MAX_PARTS = 50_000  # parts per combined insert: ~5 µs per call from here on (chDB)
LANES = 2  # inserts in flight at once


class GroupCommit:
    """Batches handed to ``insert`` (one coroutine call per combined ``INSERT``)."""

    def __init__(self, insert: Insert, *, lanes: int = LANES, max_parts: int = MAX_PARTS,
                 shared: Callable[[BaseException], bool] = lambda exc: False) -> None:
        """``shared(exc)``: whether an insert's error is the store's, for every batch alike."""
        self._insert = insert
        self._shared = shared
        self._lanes, self._max_parts = lanes, max_parts
        self._pending: list[tuple[Batch, int, asyncio.Future[None]]] = []
        self._running: set[asyncio.Task[None]] = set()
        # lanes still taking batches: given back in the same step as a lane's last look at
        # the pending list (a finished task leaves ``_running`` only in a later callback,
        # and a batch handed over in between found no free lane and waited forever)
        self._active = 0

    async def submit(self, batch: Batch, parts: int) -> None:
        """Returns once ``batch`` is stored; raises what its insert raised."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((batch, parts, done))
        if self._active < self._lanes:
            self._active += 1
            task = asyncio.create_task(self._lane())
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        await done

    def _take(self) -> list[tuple[Batch, int, asyncio.Future[None]]]:
        """The oldest waiting batches, at least one, up to ``max_parts`` parts."""
        taken, parts = 0, 0
        for _, n, _ in self._pending:
            if taken and parts + n > self._max_parts:
                break
            taken, parts = taken + 1, parts + n
        group, self._pending = self._pending[:taken], self._pending[taken:]
        return group

    async def _lane(self) -> None:
        try:
            await self._drain()
        finally:
            self._active -= 1

    async def _drain(self) -> None:
        while self._pending:
            group = self._take()
            try:
                await self._insert([batch for batch, _, _ in group])
            except asyncio.CancelledError:  # the loop is going away: nobody is left waiting
                for _, _, done in [*group, *self._pending]:
                    done.cancel()
                self._pending.clear()
                raise
            except Exception as exc:
                if len(group) == 1 or self._shared(exc):
                    for _, _, done in group:
                        _settle(done, exc)
                    continue
                for batch, _, done in group:  # alone, so only a refused batch fails
                    try:
                        await self._insert([batch])
                    except Exception as alone_exc:
                        _settle(done, alone_exc)
                    else:
                        _settle(done, None)
            else:
                for _, _, done in group:
                    _settle(done, None)

    async def close(self) -> None:
        """Wait for the inserts already handed over."""
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)


def _settle(done: asyncio.Future[None], exc: BaseException | None) -> None:
    if done.done():  # its request went away (cancelled); the batch is stored all the same
        return
    if exc is None:
        done.set_result(None)
    else:
        done.set_exception(exc)
