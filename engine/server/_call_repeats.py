"""A start for a call whose start is stored already, for every store.

The engine's sender delivers at least once: a retried batch, a replayed spool segment or
dead letter brings the same start again, and that must change nothing (nor undo a rename
made since). A start that says otherwise (another op, other inputs, another start time) is
no redelivery but a client reusing an id: it is refused (:class:`CallConflict`, a 422)
instead of silently rewriting the stored call, as weave's SQLite server refuses any second
start (a unique-key error, its 500) and its ClickHouse server keeps one of the two
(``any``). The engine's sender halves a refused batch until the start is alone and
dead-letters only it. ``display_name`` is not compared: a rename changes it after the start.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from engine.server._rows import RAW_COLUMNS, START_COLUMNS, start_fields
from engine.server._store import CallConflict

Key = tuple[str, str]  # (project_id, call id)
_COMPARED = tuple(i for i, c in enumerate(START_COLUMNS) if c != "display_name")
_JSON = frozenset(i for i, c in enumerate(START_COLUMNS) if c in RAW_COLUMNS)


def started_calls(batch: tuple[Sequence[Any], Sequence[Any], Sequence[Any]]) -> list[Any]:
    """The calls of a (starts, ends, completes) batch that carry a start, in the order
    :func:`repeats` numbers them: starts, then complete calls."""
    starts, _, completes = batch
    return [*starts, *completes]


def ids_by_project(calls: Sequence[Any]) -> dict[str, list[str]]:
    by_project: dict[str, dict[str, None]] = {}
    for call in calls:
        by_project.setdefault(call.project_id, {})[call.id] = None
    return {project: list(ids) for project, ids in by_project.items()}


def repeats(calls: Sequence[Any], stored: dict[Key, Any]) -> frozenset[int]:
    """The places in ``calls`` of starts already in ``stored`` (the start values of stored
    calls, ``START_COLUMNS`` order), the same there: redeliveries. Every other start is added
    to ``stored`` (the call itself: its values are built only if another start of it comes),
    so a later one of the same call is compared with it. Raises :class:`CallConflict` for a
    start that says otherwise than the stored one."""
    found = []
    for i, call in enumerate(calls):
        key = (call.project_id, call.id)
        before = stored.get(key)
        if before is None:
            stored[key] = call
            continue
        before = before if isinstance(before, tuple) else start_fields(before)
        if differ := _differences(before, start_fields(call)):
            raise CallConflict(call.project_id, call.id, differ)
        found.append(i)
    return frozenset(found)


def _differences(stored: Sequence[Any], sent: Sequence[Any]) -> list[str]:
    """The start fields ``sent`` gives otherwise than ``stored``; JSON text is compared as
    the values it holds (one client's spacing is another's)."""
    return [START_COLUMNS[i].removesuffix("_us") for i in _COMPARED
            if stored[i] != sent[i] and not _same_json(i, stored[i], sent[i])]  # fmt: skip


def _same_json(i: int, stored: Any, sent: Any) -> bool:
    if i not in _JSON or stored is None or sent is None:
        return False
    try:
        return msgspec.json.decode(stored) == msgspec.json.decode(sent)
    except msgspec.DecodeError:
        return False
