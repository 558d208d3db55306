"""Replay: re-send spool segments and dead letters, removing only what was acknowledged.

Used by ``engine replay`` and by the sender (its spool, in the background). Items go out
re-batched to the server's limit (:mod:`engine.sender._resend`): an item the server refuses
alone is dead-lettered with its reason, so nothing blocks what follows.

* A spool segment is :meth:`~engine.sender._spool.Spool.claim` ed, sent, and then deleted;
  when only part of it was acknowledged before the server stopped answering, the rest
  replaces it (:meth:`~engine.sender._spool.Spool.replace`, one rename). Items the server
  refused go to the dead letters.
* The dead-letter file is claimed (renamed away from its writers, see
  :mod:`engine.sender._deadletter`), sent, and the letters that failed again are appended
  back to the live file before the claimed one is deleted. Files claimed by a replay that
  died are claimed again and replayed too.

A replay that dies half-way leaves its claimed files; the next replay sends them again and
the server's upsert by call id absorbs what arrives twice. A file it was done with is not
among them: what is left of a claimed file goes back as one step
(:func:`~engine.sender._deadletter.settle`), which in ``engine replay`` a Ctrl-C or SIGTERM
waits for (:func:`_uninterrupted`).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import msgspec

from engine.common._config import MAX_REQUEST_BYTES
from engine.common._errors import EngineError
from engine.common._wait import wait_exit
from engine.ring import _files as _ring_files
from engine.ring import _orphans
from engine.sender._adaptive import SizeTarget
from engine.sender._deadletter import (
    DeadLetter,
    DeadLetters,
    claim,
    claim_abandoned,
    read_dead_letters,
    settle,
)
from engine.sender._resend import Outcome, Resender, describe, make_body, split_body
from engine.sender._spool import Spool, SpoolCorrupt, SpoolEntry
from engine.sender._transport import Transport

log = logging.getLogger("engine.replay")
_CLI_RETRIES = 3
_RECOVERY_GRACE_S = 30.0  # past a recovery's own deadline: it is stuck
# set by the command (engine replay), whose signal handlers run in its code (a second Ctrl-C
# raises KeyboardInterrupt there); the sender's spool replay takes its signals on its loop
_hold_interrupts = contextvars.ContextVar("hold_interrupts", default=False)
_INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """Within: a SIGINT or SIGTERM is noted, and raised again when the block ends, so that
    its handler (``KeyboardInterrupt``, ``Terminated``, asyncio's task cancel) cannot run
    between writing what is left of a claimed file and deleting it."""
    if not _hold_interrupts.get() or threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []
    handlers = {signum: signal.getsignal(signum) for signum in _INTERRUPTS}
    held = [signum for signum, handler in handlers.items() if callable(handler)]
    for signum in held:
        signal.signal(signum, lambda number, _frame: noted.append(number))
    try:
        yield
    finally:
        for signum in held:
            signal.signal(signum, handlers[signum])
        for signum in dict.fromkeys(noted):
            signal.raise_signal(signum)


class ReplaySummary(msgspec.Struct, kw_only=True):
    segments_sent: int = 0  # whole segments acknowledged (or their refused items dead-lettered)
    segments_kept: int = 0  # segments (or what is left of them) kept for a later replay
    segments_corrupt: int = 0
    items_delivered: int = 0
    items_kept: int = 0  # not acknowledged (server unavailable): still in the spool/dead letters
    items_rejected: int = 0  # refused for good: in the dead letters with the reason
    items_unsaved: int = 0  # could not be written back: still in the claimed file or segment
    malformed_lines: int = 0
    rejected_by_reason: dict[str, int] = {}  # too_large, invalid, http, not_json
    requests: int = 0
    splits_413: int = 0

    @property
    def complete(self) -> bool:
        """Everything was delivered (nothing kept, refused, or stuck on a disk error)."""
        return not (self.segments_kept or self.segments_corrupt or self.items_kept
                    or self.items_rejected or self.items_unsaved or self.malformed_lines)


def _count(summary: ReplaySummary, outcome: Outcome) -> None:
    summary.items_delivered += len(outcome.acked)
    summary.items_kept += len(outcome.kept)
    for rejected in outcome.rejected:
        _rejected(summary, rejected.reason, len(rejected.indexes))
    summary.requests += outcome.requests
    summary.splits_413 += outcome.splits_413


def _rejected(summary: ReplaySummary, reason: str, items: int) -> None:
    summary.items_rejected += items
    summary.rejected_by_reason[reason] = summary.rejected_by_reason.get(reason, 0) + items


def _dead_letter_rejected(dead: DeadLetters, route: str, items: list[bytes],
                          outcome: Outcome) -> None:
    for rejected in outcome.rejected:
        described = [(*describe(route, items[i]), items[i]) for i in rejected.indexes]
        dead.add_batch(reason=f"{rejected.reason}: replay: {rejected.detail}".rstrip(": "),
                       status=rejected.status, route=route, items=described)


# -- spool ---------------------------------------------------------------------------------

async def replay_spool(spool: Spool, resender: Resender, dead: DeadLetters,
                       summary: ReplaySummary) -> None:
    """Every pending segment this replayer can claim, oldest first; stops when the server
    stops answering (the rest stays for later)."""
    for entry in spool.pending():
        with spool.claim(entry) as mine:
            if not mine:
                continue
            if await _replay_segment(spool, entry, resender, dead, summary):
                return


async def _replay_segment(spool: Spool, entry: SpoolEntry, resender: Resender,
                          dead: DeadLetters, summary: ReplaySummary) -> bool:
    """Send one claimed segment; True if the server stopped answering."""
    try:
        route, body = spool.load(entry)
    except SpoolCorrupt as exc:
        summary.segments_corrupt += 1
        log.error("%s", exc)
        return False
    items = split_body(route, body)
    outcome = await resender.send(route, items)
    _count(summary, outcome)
    try:
        with _uninterrupted():
            _dead_letter_rejected(dead, route, items, outcome)
            if not outcome.kept:
                spool.done(entry)
            elif len(outcome.kept) < len(items):
                kept = [items[i] for i in outcome.kept]
                spool.replace(entry, make_body(route, kept), len(kept))
    except (OSError, EngineError) as exc:
        summary.items_unsaved += len(items) - len(outcome.acked)
        summary.segments_kept += 1
        log.error("spool segment %s kept whole (acknowledged items will be sent again): "
                  "could not write what is left of it: %s", spool.directory / entry.name, exc)
        return outcome.stopped
    if outcome.kept:
        summary.segments_kept += 1
    else:
        summary.segments_sent += 1
    return outcome.stopped


# -- dead letters --------------------------------------------------------------------------

async def replay_dead_letters(path: str | os.PathLike[str], resender: Resender,
                              summary: ReplaySummary) -> None:
    """Claim the dead-letter file (and files abandoned by earlier replays) and replay them."""
    claimed = claim_abandoned(path)
    fresh = claim(path)
    if fresh is not None:
        claimed.append(fresh)
    with DeadLetters(path) as dead:
        for claimed_file in claimed:
            await _replay_claimed(claimed_file, Path(path), resender, dead, summary)


async def _replay_claimed(claimed: Path, path: Path, resender: Resender, dead: DeadLetters,
                          summary: ReplaySummary) -> None:
    malformed: list[bytes] = []
    letters = list(read_dead_letters(claimed, lambda _n, line: malformed.append(line)))
    back: list[DeadLetter] = []
    stopped = False
    by_route: dict[str, list[DeadLetter]] = {}
    for letter in letters:  # one run of requests per route, each in the file's order
        if letter.item_invalid:  # not JSON: no server takes it; kept for a person to read
            back.append(letter)
            _rejected(summary, "not_json", 1)
            continue
        by_route.setdefault(letter.route, []).append(letter)
    for route, batch in sorted(by_route.items(), key=_ends_last):
        if stopped:  # the server stopped answering: keep the rest as it is
            back += batch
            summary.items_kept += len(batch)
            continue
        outcome = await resender.send(route, [letter.item_json for letter in batch])
        _count(summary, outcome)
        back += [batch[i] for i in outcome.kept]
        back += _renewed(batch, outcome)
        stopped = outcome.stopped
    try:
        with _uninterrupted():
            _set_aside(path, malformed)
            settle(claimed, path, back, dead)
    except OSError as exc:
        summary.items_unsaved += len(back)
        log.error("dead letters kept in %s (acknowledged ones may be sent again): could not "
                  "write the %d that failed back to %s: %s", claimed, len(back), path, exc)
        return
    summary.malformed_lines += len(malformed)


def _ends_last(route_letters: tuple[str, list[DeadLetter]]) -> bool:
    """Sorts the v2 call/end route after every other (a stable sort keeps the rest in the
    file's order): weave's server answers an end whose start it has not stored 404, and a
    start dead-lettered with its end (``start_not_delivered``) is sent first only if its
    route is. In the file's order, the ends went first whenever an end was dead-lettered
    before the first start (its own start delivered): a chaos run (tests/engine/
    test_chaos.py, seed 21) had 2 of 458 letters refused again, 404 "no start found"."""
    return route_letters[0].endswith("/call/end") and route_letters[0].startswith("/v2/")


def _renewed(batch: list[DeadLetter], outcome: Outcome) -> Iterator[DeadLetter]:
    """Letters the server refused again, with this replay's reason."""
    for rejected in outcome.rejected:
        reason = f"{rejected.reason}: replay: {rejected.detail}".rstrip(": ")
        for i in rejected.indexes:
            yield msgspec.structs.replace(batch[i], reason=reason, status=rejected.status)


def malformed_path(path: str | os.PathLike[str]) -> Path:
    """Where a replay moves the lines of the dead-letter file ``path`` that are not dead
    letters."""
    return Path(f"{os.fspath(path)}.malformed")


def _set_aside(path: Path, malformed: list[bytes]) -> None:
    """Lines that are not dead letters (torn by a crash) are kept beside the file."""
    if not malformed:
        return
    aside = malformed_path(path)
    fd = os.open(aside, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"".join(line + b"\n" for line in malformed))
        os.fsync(fd)
    finally:
        os.close(fd)
    log.error("%d lines of %s are not dead letters (torn by a crash, or written by something "
              "else): moved to %s", len(malformed), path, aside)


# -- ring sets of dead engines --------------------------------------------------------------

class RingRecovery(msgspec.Struct, kw_only=True):
    recovered: list[str] = []  # ring sets delivered or persisted, then removed
    kept: list[str] = []  # still holding records after their recovery (e.g. a full disk)
    elsewhere: list[tuple[str, str, int]] = []  # (name, url, records) of other servers' engines


def recover_rings(url: str, api_key: str | None) -> RingRecovery:
    """Run a sender on every ring set a dead engine delivering to ``url`` left holding
    records, and wait for each (it ends within that engine's ``shutdown_timeout_s``)."""
    result = RingRecovery()
    for orphan, proc in _orphans.recover(url, api_key):
        try:
            wait_exit(proc, _recovery_timeout_s(orphan))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        held = os.path.exists(_ring_files.segment_path(orphan.name))
        (result.kept if held else result.recovered).append(orphan.name)
    result.elsewhere = [(o.name, o.url or "?", o.unreleased_records)
                        for o in _orphans.find_orphans() if o.url != url]
    return result


def _recovery_timeout_s(orphan: _orphans.Orphan) -> float:
    try:
        with open(orphan.sender_args, "rb") as file:
            shutdown_s = float(msgspec.json.decode(file.read())["config"]["shutdown_timeout_s"])
    except (OSError, msgspec.DecodeError, KeyError, TypeError, ValueError):
        shutdown_s = 30.0
    return shutdown_s + _RECOVERY_GRACE_S


# -- the command ---------------------------------------------------------------------------

async def replay(url: str, spool_dir: str | None, dead_letter_path: str | None,
                 api_key: str | None = None, max_request_bytes: int = MAX_REQUEST_BYTES,
                 ) -> ReplaySummary:
    """``engine replay``: the spool (if given), then the dead letters (if the file or
    files claimed by an earlier replay exist)."""
    summary = ReplaySummary()
    _hold_interrupts.set(True)  # this task's context: the command's, not the sender's
    async with Transport(url, api_key=api_key) as transport:
        resender = Resender(transport, SizeTarget(max_request_bytes), retries=_CLI_RETRIES)
        if spool_dir:
            with DeadLetters(dead_letter_path or _default_dead_letters()) as dead:
                await replay_spool(Spool(spool_dir), resender, dead, summary)
        if dead_letter_path:
            await replay_dead_letters(dead_letter_path, resender, summary)
    return summary


def _default_dead_letters() -> Path:
    from engine.common._config import default_dead_letter_path

    return default_dead_letter_path()
