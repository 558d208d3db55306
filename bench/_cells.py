"""Table cells shared by the summary and the scenarios' own sections: numbers, ``median
(min–max)`` spreads and the notes of a run that timed out or failed."""

from __future__ import annotations

from typing import Any


def num(value: Any, digits: int = 0) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and digits:
        return f"{value:,.{digits}f}"
    return f"{value:,.0f}" if abs(value) >= 10 or not digits else f"{value:,.{digits}f}"


def spread(row: dict[str, Any], name: str, digits: int = 0) -> str:
    """``median (min–max)`` when there were several runs, else the value."""
    text = num(row.get(name), digits)
    if row.get(name + "_min") is not None:
        text += f" ({num(row[name + '_min'], digits)}–{num(row[name + '_max'], digits)})"
    return text


def flags(row: dict[str, Any]) -> str:
    notes = []
    if row.get("timed_out"):
        notes.append("timed out")
    if row.get("errors"):
        notes.append("error: " + str(row["errors"][0])[:80])
    return "; ".join(notes)
