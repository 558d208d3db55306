"""The closing line of a command that drove an engine: where every item went, from the
same counters ``engine stats`` and ``/metrics`` show, so the two never disagree."""

from __future__ import annotations

from typing import Any

from engine.common._config import EngineConfig, default_state_dir, spool_path
from engine.common._redact import redact_url


def dead_letter_file(cfg: EngineConfig) -> str:
    return str(cfg.dead_letter_path or default_state_dir() / "dead_letters.jsonl")


def delivery(stats: dict[str, Any], cfg: EngineConfig) -> tuple[str, bool]:
    """("N items acknowledged by URL; …", True when the server acknowledged everything)."""
    acked, spooled = stats.get("items_acked", 0), stats.get("spooled_items", 0)
    dead, lost = stats.get("dead_letters", 0), stats.get("undelivered", 0)
    url = redact_url(cfg.url)
    parts = [f"{acked:,} items acknowledged by {url}"]
    if spooled:
        spool = spool_path(cfg)
        parts.append(f"{spooled:,} spooled in {spool} (the next engine toward {url} sends "
                     f"them, or `engine replay --spool {spool} --to {url}`)")
    if dead:
        parts.append(f"{dead:,} dead-lettered to {dead_letter_file(cfg)} ({_dead_reasons(stats)}"
                     "see why in the file; `engine replay --dead-letters FILE --to URL` sends "
                     "them again)")
    if lost:
        parts.append(f"{lost:,} records neither delivered nor saved (the sender was stopped "
                     "before it could settle them)")
    return "; ".join(parts), not (spooled or dead or lost)


def _dead_reasons(stats: dict[str, Any]) -> str:
    """"1 too_large, 2 http; " from the sender's dead_* counters ("" without them)."""
    reasons = [f"{n:,} {key.removeprefix('dead_')}" for key, n in stats.items()
               if key.startswith("dead_") and key != "dead_letters" and n]
    return f"{', '.join(reasons)}; " if reasons else ""
