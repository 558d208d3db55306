"""Calls past their project's retention are deleted by the server itself.

A project's retention (weave's project TTL settings, ``/project/ttl_settings/update``, or
``engine serve --retention-days`` for every project without one) is how many days its
calls are kept after they start. Every ``interval_s`` (and once shortly after the server
starts) :class:`Pruner` deletes the calls of each retained project that started before
``now - days``, in chunks (the store's ``retention_chunk``: 5,000 calls per SQLite
transaction) so that ingest and reads go on between them. A call known only by its end
goes by its end time. Calls are deleted one by one as they age, as weave's ClickHouse TTL
does: a child that started later than its parent stays a little longer. Objects, tables,
files and feedback are kept.

Unlike weave, which stamps each call with the expiry its project's setting gave when the
call arrived, the retention in force applies to every call: shortening it frees the space
of older calls at the next pass. A pass that fails (a locked or unreachable store, a full
disk) is logged and tried again at the next interval; it never stops the server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the command line reads DEFAULT_INTERVAL_S without the server's imports
    from engine.server._state import Counters
    from engine.server._store import Store

log = logging.getLogger("engine.server")

DAY_US = 86_400_000_000
DEFAULT_INTERVAL_S = 600.0
FIRST_PASS_S = 5.0  # after the server starts: not in the way of its first requests


class Pruner:
    """Deletes calls past their project's retention every ``interval_s``."""

    def __init__(self, store: Store, counters: Counters, interval_s: float = DEFAULT_INTERVAL_S,
                 default_days: int | None = None, first_pass_s: float = FIRST_PASS_S) -> None:
        self._store = store
        self._counters = counters
        self._interval_s = interval_s
        self._default_days = default_days
        self._first_pass_s = min(first_pass_s, interval_s)
        self._failed = False

    async def run(self) -> None:
        await asyncio.sleep(self._first_pass_s)
        while True:
            try:
                await self.prune()
                self._failed = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - logged; the next pass tries again
                if not self._failed:  # once per run of failures, not every interval
                    log.error("engine serve: deleting calls past their retention failed: %s; "
                              "trying again every %.0f s", exc, self._interval_s)
                self._failed = True
            await asyncio.sleep(self._interval_s)

    async def projects(self) -> list[tuple[str, int]]:
        """Each project's retention: its own setting, else the server's default."""
        own = dict(await self._store.retained_projects())
        if self._default_days is not None:
            for project_id, _ in await self._store.project_call_counts():
                own.setdefault(project_id, self._default_days)
        return sorted(own.items())

    async def prune(self, now_us: int | None = None) -> int:
        """One pass over every retained project; returns how many calls it deleted."""
        began = time.monotonic()
        now_us = time.time_ns() // 1000 if now_us is None else now_us
        total = 0
        for project_id, days in await self.projects():
            cutoff_us = now_us - days * DAY_US
            chunk = self._store.retention_chunk
            deleted = 0
            while True:
                n = await self._store.delete_calls_before(project_id, cutoff_us, chunk)
                deleted += n
                self._counters.calls_expired += n
                if n < chunk:
                    break
            if deleted:
                log.info("engine serve: deleted %d calls of %s that started over %d days ago "
                         "(its retention)", deleted, project_id, days)
            total += deleted
        self._counters.retention_passes += 1
        self._counters.retention_last_pass_ms = round((time.monotonic() - began) * 1000)
        return total
