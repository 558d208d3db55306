"""``engine replay``: re-send what engines kept (rings of dead engines, dead letters, spool)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from engine.cli import _args, _probe
from engine.cli._args import CommandFailed, UsageError
from engine.common._redact import redact_url

T = TypeVar("T")


def add(subparsers: argparse._SubParsersAction) -> None:
    replay = _args.add_command(
        subparsers, "replay", "re-send what engines kept: rings of dead engines, dead letters, spool",
        "Recover the ring sets that dead engines delivering to URL left in shared memory, "
        "then POST dead-lettered items and spooled batches again, re-batched to the server's "
        "limit; what is acknowledged is removed, what fails stays for the next replay. Safe "
        "to run while engines write the same files.")
    replay.add_argument("--spool", type=_args.existing_dir, default=None,
                        help="spool directory (default: the spool_dir setting, from "
                             "$ENGINE_SPOOL_DIR or the config file; by default the engines' "
                             "spool for this URL under ~/.local/state/engine/spool)")
    replay.add_argument("--dead-letters", type=dead_letter_file, default=None,
                        help="dead-letter file; after a stopped replay, the same path sends "
                             "what it claimed (FILE.claimed-*) (default: the "
                             "dead_letter_path setting, from $ENGINE_DEAD_LETTER_PATH or the "
                             "config file, else ~/.local/state/engine/dead_letters.jsonl)")
    replay.add_argument("--to", type=_args.url, required=True, help="trace server URL")
    _args.add_config_file_flag(replay)
    _args.add_log_flags(replay)
    replay.set_defaults(func=run)


def dead_letter_file(text: str) -> str:
    """An existing file, the path of one a replay claimed and did not finish (Ctrl-C: the
    file is gone, its claimed copies are what is left to send), or a path with no file
    yet (an engine writes it at its first dead letter): :func:`_absent_dead_letters` says
    whether that is an error."""
    if os.path.exists(text):
        return _args.existing_file(text)
    return text


def _absent_dead_letters(path: str, spool: str | None) -> None:
    """Whether ``--dead-letters PATH`` names no file (nor claimed copies). With a spool to
    send that is one line, not an error: an engine writes the file at its first dead
    letter, and a scheduled ``engine replay --dead-letters F --spool D`` replayed nothing
    at all (exit 2) while no letter had been written. Without one, a path that names
    nothing is a mistake (a typo), said as such."""
    from engine.sender._deadletter import claimed_files

    if os.path.exists(path) or claimed_files(path):
        return
    if spool is None or not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise UsageError(f"replay: argument --dead-letters: {path}: no such file, nor any "
                         f"{path}.claimed-* left by a stopped replay")
    print(f"engine replay: no dead letters at {path} (no engine has written one there yet); "
          f"replaying the spool {spool}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from engine.common._config import default_dead_letter_path, spool_path
    from engine.sender._replay import malformed_path, recover_rings, replay

    _args.setup_logging(args)
    cfg = _args.load_settings(args, url=args.to)  # the engines' settings: where they persist
    api_key = cfg.api_key
    spool = args.spool or spool_path(cfg)
    if not args.spool and spool and not os.path.isdir(spool):  # nothing was ever spooled there
        spool = None
    dead = args.dead_letters or cfg.dead_letter_path or str(default_dead_letter_path())
    if args.dead_letters is not None:
        _absent_dead_letters(args.dead_letters, spool)
    _refuse_other_files(dead)
    _probe.check_server(args.to, api_key, "replay",
                        "trying anyway: what is not delivered is kept for the next replay")
    try:
        with _args.sigterm_interrupts():
            rings = recover_rings(args.to, api_key)
            summary = asyncio.run(_sigterm_cancels(replay(
                args.to, spool, dead, api_key, cfg.max_request_bytes, cfg.compression,
                cfg.compression_level)))
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: nothing claimed is deleted unsent
        print("engine replay: stopped before the end; what it claimed is kept, and the next "
              "`engine replay` (with the same --dead-letters and --spool) sends it (the server "
              "keeps one row per call id)", file=sys.stderr)
        raise
    aside = (f"; {summary.malformed_lines} lines that are not dead letters moved to "
             f"{malformed_path(dead)}" if summary.malformed_lines else "")
    print(f"engine replay: {len(rings.recovered)} ring sets of dead engines recovered"
          f"{f', {len(rings.kept)} still holding records' if rings.kept else ''}; "
          f"{summary.items_delivered} items delivered in {summary.requests} requests"
          f" ({summary.wire_bytes / 1e6:.1f} MB{', zstd' if summary.compression == 'zstd' else ''})"
          f"{joined_text(summary.calls_joined)}; "
          f"{summary.items_kept} kept for later, {summary.items_rejected} refused again "
          f"(in {dead}), {summary.items_unsaved} not written back; "
          f"{summary.segments_sent} spool segments done, {summary.segments_kept} kept, "
          f"{summary.segments_corrupt} corrupt{aside}")
    if summary.items_failing:
        print(f"engine replay: the server answered 500 to {summary.items_failing} items alone "
              f"while it took the others (it fails on them): kept in {dead} (or the spool); "
              "its log says why, and the next `engine replay` sends them again",
              file=sys.stderr)
    if invalid := summary.rejected_by_reason.get("not_json"):
        print(f"engine replay: {invalid} dead letters hold an item that is not JSON "
              f"(\"item_invalid\": true): not sent, kept in {dead} as its text to read and fix")
    for name, url, records in rings.elsewhere:
        url = redact_url(url)
        print(f"engine replay: ring set {name} holds {records} records for {url}: "
              f"`engine replay --to {url}` recovers them")
    return 0 if summary.complete and not rings.kept else 1


def joined_text(joined: int) -> str:
    """What the summary says of starts and ends joined into complete calls (if any)."""
    if not joined:
        return ""
    return (f" ({joined} of them a call's start and end, persisted apart, joined into "
            "one complete call)")


async def _sigterm_cancels(work: Coroutine[Any, Any, T]) -> T:
    """``work``, which a SIGTERM stops as asyncio stops it on Ctrl-C: cancelled at its next
    ``await``, then :class:`~engine.cli._args.Terminated` is raised. Raised by the signal
    handler where the loop happens to be, it landed in whichever task ran: in aiohttp's task
    writing a request body it was logged as "Task exception was never retrieved" with a
    traceback."""
    task = asyncio.current_task()
    if task is None or threading.current_thread() is not threading.main_thread():
        return await work  # no signal handler of ours outside the main thread
    loop = asyncio.get_running_loop()
    terminated = False

    def on_sigterm(_signum: int, _frame: Any) -> None:
        nonlocal terminated
        if not terminated:
            terminated = True
            task.cancel()
            loop.call_soon_threadsafe(lambda: None)  # wake a select() with a long timeout

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return await work
    except asyncio.CancelledError:
        if terminated:
            raise _args.Terminated from None
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _refuse_other_files(path: str) -> None:
    """A file that holds no dead letter (calls to ingest, a log) is named by mistake: a
    replay would move it away whole, as lines that are not dead letters."""
    from engine.sender._deadletter import holds_dead_letters

    try:
        other = os.path.isfile(path) and not holds_dead_letters(path)
    except OSError as exc:
        raise CommandFailed(f"replay: cannot read the dead letters {path}: "
                            f"{exc.strerror or exc}") from exc
    if other:
        raise UsageError(f"replay: {path} is not a dead-letter file (none of its lines is a "
                         "dead letter); left as it is: name the engine's dead-letter file "
                         "(--dead-letters, or the dead_letter_path setting)")
