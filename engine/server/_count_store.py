"""The ``--store count`` sink: bodies are decoded and validated, items counted, nothing kept.

Benchmarks point senders at it to measure the sender, not SQLite. Reads answer as an
empty store would.
"""

from __future__ import annotations

from engine.server._rows import Complete, End, Page, Selection, Start


class CountSink:
    kind = "count"

    async def write_calls(self, starts: list[Start], ends: list[End], completes: list[Complete]):
        return None  # keeps nothing, so builds no rows (SQLiteStore builds its own)

    async def delete_calls(self, project_id: str, call_ids: list[str]) -> int:
        return 0

    async def update_display_name(self, project_id: str, call_id: str, name: str | None) -> bool:
        return False

    async def select_calls(self, selection: Selection, page: Page) -> list[tuple]:
        return []

    async def count_calls(self, selection: Selection) -> int:
        return 0

    async def close(self) -> None:
        return None
