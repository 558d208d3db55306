"""Calls naming weave ops the server does not have: said once per project, counted.

weave 0.54.0's client keeps a disk cache of what it created (``WEAVE_SERVER_CACHE_DIR``,
by default ``<tmp>/weave_trace_server_cache``), keyed by the request alone, not by the
server. Pointed at a fresh server, or at the same URL over a wiped database, it sends the
calls but not the ops, models, datasets and evaluations its cache says it created before:
the trace browser and weave's own reads then find refs to nothing, and nothing said why.
The server cannot fetch them; it says so. Each weave op a call names
(``weave:///<entity>/<project>/op/<name>:<digest>``) is looked up once, ``grace_s`` after
it is first seen (weave saves an op on a thread of its own: its first calls can arrive
before it); one that is missing then is counted (``ops_missing`` in ``/stats`` and
``/metrics``) and the first in a project is logged with what to do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.server._state import Counters
    from engine.server._store import Store

log = logging.getLogger("engine.server")

GRACE_S = 10.0
MAX_PENDING = 10_000  # op refs waiting for their look (more: the rest wait for a later call)
MAX_KNOWN = 100_000  # op refs looked up (the set is cleared past it: each is looked up again)


class OpWatch:
    def __init__(self, store: Store, counters: Counters, grace_s: float = GRACE_S) -> None:
        self._store = store
        self._counters = counters
        self._grace_s = grace_s
        self._known: set[tuple[str, str]] = set()
        self._pending: dict[tuple[str, str], float] = {}
        self._said: set[str] = set()  # projects already warned about

    def saw(self, calls: Iterable[Any]) -> None:
        """The started calls of one request (on the event loop: a set look-up per distinct
        op of the request)."""
        for key in {(c.project_id, c.op_name) for c in calls}:
            if key in self._known or key in self._pending:
                continue
            if key[1] is not None and key[1].startswith("weave:///") and "/op/" in key[1] \
                    and len(self._pending) < MAX_PENDING:
                self._pending[key] = time.monotonic()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._grace_s / 2)
            try:
                await self.look()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a store in trouble: look again later
                log.debug("engine serve: looking up the ops calls name failed: %s", exc)

    async def look(self, now: float | None = None) -> list[tuple[str, str]]:
        """Looks up the op refs first seen ``grace_s`` ago or more; returns the missing."""
        now = time.monotonic() if now is None else now
        due = [key for key, seen in self._pending.items() if now - seen >= self._grace_s]
        missing = []
        for project_id, ref in due:
            name, _, digest = ref.rsplit("/", 1)[1].rpartition(":")
            if await self._store.read_object(project_id, name, digest) is None:
                missing.append((project_id, ref))
            del self._pending[(project_id, ref)]
            if len(self._known) >= MAX_KNOWN:
                self._known.clear()
            self._known.add((project_id, ref))
        self._counters.ops_missing += len(missing)
        for project_id, ref in missing:
            if project_id not in self._said:
                self._said.add(project_id)
                log.warning(
                    "engine serve: calls in project %s name the op %s, which this server does "
                    "not have (no client sent it). If weave's client sent these calls: its disk "
                    "cache of what it created (WEAVE_SERVER_CACHE_DIR, by default "
                    "<tmp>/weave_trace_server_cache) is shared by every server and says it was "
                    "created before, on another server or an earlier database at this URL, so "
                    "the objects, datasets and models it created then are missing here too; run "
                    "the program with WEAVE_SERVER_CACHE_DIR set to a folder of this server's "
                    "own (or WEAVE_USE_SERVER_CACHE=false), or through the engine's weave "
                    "integration (ENGINE_WEAVE=1, which does that). If they were loaded from a "
                    "file or written by another tool, the op was not among them.",
                    project_id, ref)
        return missing
