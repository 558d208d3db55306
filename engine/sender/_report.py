"""The one line a sender logs when it exits: where every item of its ring set went.

Delivered, persisted (and where), not persisted (by reason), dropped by the producers (by
reason), and left in shared memory for recovery -- from the same counters ``stats()``,
``engine stats`` and ``/metrics`` show. INFO when the server acknowledged everything,
WARNING otherwise.
"""

from __future__ import annotations

import logging
from typing import Any

from engine.common._redact import redact_url

_UNPERSISTED = {"unpersisted_no_space": "disk full", "unpersisted_unwritable": "unwritable",
                "unpersisted_spool_full": "spool at spool_max_bytes"}
_DROPPED = {"dropped_full": "ring full (on_full='drop', or waiting for room as the engine closed)",
            "wrapper_dropped": "calls op wrappers could not write (logged where they ran)"}


def exit_line(stats: dict[str, Any], producers: dict[str, int], *, url: str, dead_path: str,
              spool_dir: str | None, kept_records: int, ring_name: str,
              spool_left: int | None = None) -> tuple[int, str]:
    """(log level, message) for a sender's exit (``url`` shown without its credentials)."""
    url = redact_url(url)
    parts = [f"engine: {stats['items_acked']:,} items delivered to {url}"]
    dead, spooled = stats["dead_letters"], stats["spooled_items"]
    replayed, refused = stats.get("spool_replayed_items", 0), stats.get("spool_refused_items", 0)
    if dead or spooled:
        moved = (f" ({refused:,} of them from the spool, refused when its replay sent them)"
                 if refused else "")
        where = [f"{dead:,} in the dead letters {dead_path}{moved}" if dead else "",
                 f"{spooled:,} in the spool {spool_dir}" if spooled else ""]
        # an item moved from the spool to the dead letters is one item, persisted once
        parts.append(f"{max(0, dead - refused) + spooled:,} persisted "
                     f"({', '.join(w for w in where if w)}; `engine replay` sends them)")
    if replayed:
        parts.append(f"its spool replay delivered {replayed:,} spooled items")
    if (spooled or replayed) and spool_left is not None:  # what is left to send, whoever spooled it
        parts.append(f"the spool holds {spool_left:,} items now")
    unpersisted = [f"{stats[key]:,} {why}" for key, why in _UNPERSISTED.items() if stats[key]]
    if unpersisted:  # held in shared memory meanwhile: delivered since, or counted below
        parts.append(f"could not persist for a while: {', '.join(unpersisted)}")
    dropped = [f"{producers[key]:,} {why}" for key, why in _DROPPED.items() if producers[key]]
    if stats.get("untraced_no_shared_memory"):
        dropped.append(f"{stats['untraced_no_shared_memory']:,} calls of processes that found "
                       "no room in /dev/shm for their ring (not traced)")
    if stats.get("untraced_no_slot"):
        dropped.append(f"{stats['untraced_no_slot']:,} calls of processes that found every ring "
                       "slot taken (not traced; raise max_slots)")
    parts.append(f"dropped: {', '.join(dropped)}" if dropped else "dropped: none")
    if kept_records:
        parts.append(f"{kept_records:,} records left in shared memory (ring set {ring_name}) "
                     f"for the next engine or `engine replay --to {url}` to recover")
    clean = not (dead or spooled or unpersisted or dropped or kept_records)
    return (logging.INFO if clean else logging.WARNING), "; ".join(parts)
