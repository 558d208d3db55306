"""``engine replay``: re-send what engines kept (rings of dead engines, dead letters, spool)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from engine.cli import _args, _probe
from engine.common import _env
from engine.common._redact import redact_url


def add(subparsers: argparse._SubParsersAction) -> None:
    replay = _args.add_command(
        subparsers, "replay", "re-send what engines kept: rings of dead engines, dead letters, spool",
        "Recover the ring sets that dead engines delivering to URL left in shared memory, "
        "then POST dead-lettered items and spooled batches again, re-batched to the server's "
        "limit; what is acknowledged is removed, what fails stays for the next replay. Safe "
        "to run while engines write the same files.")
    replay.add_argument("--spool", type=_args.existing_dir, default=None,
                        help="spool directory (default $ENGINE_SPOOL_DIR; unset: none)")
    replay.add_argument("--dead-letters", type=_args.existing_file, default=None,
                        help="dead-letter file (default $ENGINE_DEAD_LETTER_PATH, else "
                             "~/.local/state/engine/dead_letters.jsonl)")
    replay.add_argument("--to", type=_args.url, required=True, help="trace server URL")
    _args.add_log_flags(replay)
    replay.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.common._config import default_state_dir
    from engine.sender._replay import recover_rings, replay

    _args.setup_logging(args)
    api_key = os.environ.get(_env.API_KEY) or os.environ.get("WANDB_API_KEY") or None
    _probe.check_server(args.to, api_key, "replay",
                        "trying anyway: what is not delivered is kept for the next replay")
    spool = args.spool or os.environ.get("ENGINE_SPOOL_DIR") or None
    dead = (args.dead_letters or os.environ.get("ENGINE_DEAD_LETTER_PATH")
            or str(default_state_dir() / "dead_letters.jsonl"))
    try:
        with _args.sigterm_interrupts():
            rings = recover_rings(args.to, api_key)
            summary = asyncio.run(replay(args.to, spool, dead, api_key))
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: nothing claimed is deleted unsent
        print("engine replay: stopped before the end; what it claimed is kept, and the next "
              "`engine replay` sends it (the server keeps one row per call id)", file=sys.stderr)
        raise
    print(f"engine replay: {len(rings.recovered)} ring sets of dead engines recovered"
          f"{f', {len(rings.kept)} still holding records' if rings.kept else ''}; "
          f"{summary.items_delivered} items delivered in {summary.requests} requests; "
          f"{summary.items_kept} kept for later, {summary.items_rejected} refused again "
          f"(in {dead}), {summary.items_unsaved} not written back; "
          f"{summary.segments_sent} spool segments done, {summary.segments_kept} kept, "
          f"{summary.segments_corrupt} corrupt")
    if invalid := summary.rejected_by_reason.get("not_json"):
        print(f"engine replay: {invalid} dead letters hold an item that is not JSON "
              f"(\"item_invalid\": true): not sent, kept in {dead} as its text to read and fix")
    for name, url, records in rings.elsewhere:
        url = redact_url(url)
        print(f"engine replay: ring set {name} holds {records} records for {url}: "
              f"`engine replay --to {url}` recovers them")
    return 0 if summary.complete and not rings.kept else 1
