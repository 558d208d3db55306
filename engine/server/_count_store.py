"""The ``--store count`` sink: call bodies are decoded and validated, calls counted, none kept.

Benchmarks point senders at it to measure the sender, not SQLite. Call reads answer as an
empty store would. Everything else (objects, tables, files, feedback: a benchmark's
``weave.init`` still publishes its ops) is kept in a private SQLite file that is removed
when the store closes.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from engine.server._rows import Complete, End, Start
from engine.server._sqlite_store import SQLiteStore
from engine.server._store import CallRow, CallsQuery, ThreadTurn


class CountStore(SQLiteStore):
    kind = "count"

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="engine-count-"))  # 0700
        super().__init__(self._dir / "objects.db")

    async def insert_calls(self, starts: list[Start], ends: list[End], completes: list[Complete]) -> None:
        return None  # keeps nothing, so builds no rows (SQLiteStore builds its own)

    async def query_calls(self, query: CallsQuery) -> AsyncIterator[list[CallRow]]:
        for page in ():  # an async generator that yields nothing
            yield page

    async def count_calls(self, query: CallsQuery) -> int:
        return 0

    async def trace_storage_bytes(self, project_id: str, trace_ids: list[str]) -> dict[str, int]:
        return {}

    async def delete_calls(self, project_id: str, call_ids: list[str]) -> list[str]:
        return []

    async def set_call_display_name(self, project_id: str, call_id: str, name: str | None) -> bool:
        return False

    async def thread_turns(self, project_id: str, thread_ids: list[str] | None,
                           max_turns: int) -> list[ThreadTurn]:  # fmt: skip
        return []

    async def close(self) -> None:
        await super().close()
        shutil.rmtree(self._dir, ignore_errors=True)
