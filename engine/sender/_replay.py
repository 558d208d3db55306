"""Replay: re-send spool segments and dead letters, removing only what was acknowledged.

Used by ``engine replay`` and by the sender (its spool, in the background). Items go out
re-batched to the server's limit (:mod:`engine.sender._resend`): an item the server refuses
alone is dead-lettered with its reason, so nothing blocks what follows.

* A spool segment is :meth:`~engine.sender._spool.Spool.claim` ed, sent, and then deleted;
  when only part of it was acknowledged before the server stopped answering, the rest
  replaces it (:meth:`~engine.sender._spool.Spool.replace`, one rename). Items the server
  refused go to the dead letters: first the segment is replaced by one without the
  acknowledged items, marked as dead-lettering its last ones (:data:`DEAD_LETTERING`), so
  that a replay killed before the segment is done with re-sends none of those, and the next
  replay says how many of the refused ones may then be in the dead letters twice.
* The dead-letter file is claimed (renamed away from its writers, see
  :mod:`engine.sender._deadletter`), sent, and the letters that failed again become the
  live file, with what engines wrote to it meanwhile, in the rename that removes the claimed
  one. Files claimed by a replay that died are claimed again and replayed too.

A replay that dies half-way leaves its claimed files; the next replay sends them again and
the server's upsert by call id absorbs what arrives twice. A file it was done with is not
among them: what is left of a claimed file goes back as one step
(:func:`~engine.sender._deadletter.settle`), which in ``engine replay`` a Ctrl-C or SIGTERM
waits for (:func:`_uninterrupted`).
"""

from __future__ import annotations

import asyncio
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
from engine.common._errors import EngineError, SendError
from engine.common._wait import wait_exit
from engine.ring import _files as _ring_files
from engine.ring import _orphans
from engine.sender._adaptive import SizeTarget
from engine.sender._deadletter import (
    DeadLetter,
    DeadLetters,
    Writeback,
    claim,
    claim_abandoned,
    read_dead_letters_at,
)
from engine.sender._join import (
    CALL_META,
    complete_route,
    is_alone_route,
    join_alone_pairs,
    join_items,
    start_end_pairs,
)
from engine.sender._resend import Outcome, Resender, describe, make_body, split_body
from engine.sender._spool import Spool, SpoolCorrupt, SpoolEntry
from engine.sender._transport import Compressor, Transport, choose_compression

log = logging.getLogger("engine.replay")
_CLI_RETRIES = 3
# the dead letters a replay reads, joins and sends at once, in bytes of items: a file of
# gigabytes goes window after window (a replay's memory: a few times this)
_WINDOW_BYTES = 64 << 20
_RECOVERY_GRACE_S = 30.0  # past a recovery's own deadline: it is stuck
# pairs of spool segments (a call's v2 start and end) sent at once: each claim holds a
# descriptor open
_JOIN_AT_ONCE = 128
# set by the command (engine replay), whose signal handlers run in its code (a second Ctrl-C
# raises KeyboardInterrupt there); the sender's spool replay takes its signals on its loop
_hold_interrupts = contextvars.ContextVar("hold_interrupts", default=False)
_INTERRUPTS = (signal.SIGINT, signal.SIGTERM)
DEAD_LETTERING = "dead_lettering"  # a spool segment's meta: its last N items, being dead-lettered


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
    calls_joined: int = 0  # of them, a v2 start and its end sent as one complete call
    items_kept: int = 0  # not acknowledged (server unavailable): still in the spool/dead letters
    items_failing: int = 0  # of them, answered 500 alone while the server took the others
    items_rejected: int = 0  # refused for good: in the dead letters with the reason
    items_unsaved: int = 0  # could not be written back: still in the claimed file or segment
    malformed_lines: int = 0
    rejected_by_reason: dict[str, int] = {}  # too_large, invalid, http, not_json
    requests: int = 0
    wire_bytes: int = 0  # request bodies as sent (zstd where the server takes it)
    compression: str = "none"
    splits_413: int = 0

    @property
    def complete(self) -> bool:
        """Everything was delivered (nothing kept, refused, or stuck on a disk error)."""
        return not (self.segments_kept or self.segments_corrupt or self.items_kept
                    or self.items_rejected or self.items_unsaved or self.malformed_lines)


def _count(summary: ReplaySummary, outcome: Outcome) -> None:
    summary.items_delivered += len(outcome.acked)
    summary.items_kept += len(outcome.kept)
    if not outcome.stopped:
        summary.items_failing += len(outcome.kept)
    for rejected in outcome.rejected:
        _rejected(summary, rejected.reason, len(rejected.indexes))
    summary.requests += outcome.requests
    summary.wire_bytes += outcome.wire_bytes
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
                       summary: ReplaySummary, stop: asyncio.Event | None = None) -> None:
    """Every pending segment this replayer can claim, oldest first; stops when the server
    stops answering, or before the next segment once ``stop`` is set (a sender closing: the
    segment it sends is finished, so none is left sent but still on disk, to go twice); the
    rest stays for later."""
    stop = stop or asyncio.Event()
    entries = spool.pending()
    alone = [entry for entry in entries if is_alone_route(entry.route)]
    if alone and await _replay_alone(spool, alone, resender, dead, summary, stop):
        return
    for entry in entries:
        if stop.is_set():
            return
        if is_alone_route(entry.route):
            continue
        with spool.claim(entry) as mine:
            if not mine:
                continue
            if await _replay_segment(spool, entry, resender, dead, summary):
                return


async def _replay_alone(spool: Spool, entries: list[SpoolEntry], resender: Resender,
                        dead: DeadLetters, summary: ReplaySummary, stop: asyncio.Event) -> bool:
    """Segments of one v2 start or end each (a call open long enough that its start went
    alone, toward weave's server): a start and its end among them (their meta names the
    call) go joined into one complete call, batched, as the live sender splices them (both
    segments done once it is acknowledged); the others, and a pair the server refuses
    joined, go as segments of their own (:func:`_replay_segment`), in order. True if the
    server stopped answering, or ``stop`` was set."""
    keys = [tuple(entry.meta[CALL_META]) if entry.meta.get(CALL_META)
            and not entry.meta.get(DEAD_LETTERING) else None for entry in entries]
    pairs = [(entries[n], entries[at])
             for n, at in start_end_pairs([entry.route for entry in entries], keys)]
    settled: set[str] = set()  # segments done with their call's joined item
    for first in range(0, len(pairs), _JOIN_AT_ONCE):
        if stop.is_set() or await _replay_joined(
                spool, pairs[first:first + _JOIN_AT_ONCE], resender, summary, settled):
            return True
    for entry in entries:
        if stop.is_set():
            return True
        if entry.name in settled:
            continue
        with spool.claim(entry) as mine:
            if mine and await _replay_segment(spool, entry, resender, dead, summary):
                return True
    return False


async def _replay_joined(spool: Spool, pairs: list[tuple[SpoolEntry, SpoolEntry]],
                         resender: Resender, summary: ReplaySummary, settled: set[str]) -> bool:
    """Send ``pairs`` (a start's and its end's segments) that this replayer claims, each
    joined into one complete call, batched per route; add the segments done to ``settled``.
    True if the server stopped answering (what is not acknowledged stays as it was)."""
    with contextlib.ExitStack() as claims:
        by_route: dict[str, list[tuple[bytes, SpoolEntry, SpoolEntry]]] = {}
        for start, end in pairs:
            if not (claims.enter_context(spool.claim(start))
                    and claims.enter_context(spool.claim(end))):  # fmt: skip
                continue
            try:
                (route, start_body), (_, end_body) = spool.load(start), spool.load(end)
            except (OSError, SpoolCorrupt):  # gone or damaged: as segments of their own
                continue
            whole = join_items(start_body, end_body)
            if whole is not None:
                by_route.setdefault(complete_route(route), []).append((whole, start, end))
        for route, mine in by_route.items():
            outcome = await resender.send(route, [whole for whole, _, _ in mine])
            summary.requests += outcome.requests
            summary.wire_bytes += outcome.wire_bytes
            summary.splits_413 += outcome.splits_413
            summary.items_delivered += len(outcome.acked)
            summary.calls_joined += len(outcome.acked)
            for i in outcome.acked:
                for entry in mine[i][1:]:
                    spool.done(entry)
                    settled.add(entry.name)
                    summary.segments_sent += 1
            if outcome.stopped:
                summary.items_kept += len(outcome.kept)
                summary.segments_kept += 2 * len(outcome.kept)
                return True
            # refused joined: each of its two segments goes alone afterwards, as it was
    return False


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
    if marked := entry.meta.get(DEAD_LETTERING):
        log.warning("spool segment %s: a replay was stopped as it dead-lettered its last %s "
                    "items (refused by the server): they are sent again, and those refused "
                    "again may be in the dead letters twice", spool.directory / entry.name,
                    marked)
    outcome = await resender.send(route, items)
    _count(summary, outcome)
    try:
        with _uninterrupted():
            kept = [items[i] for i in outcome.kept]
            if outcome.rejected:
                entry = _mark_dead_lettering(spool, entry, route, kept, items, outcome)
            _dead_letter_rejected(dead, route, items, outcome)
            if not outcome.kept:
                spool.done(entry)
            elif len(outcome.kept) < len(items):
                meta = {k: v for k, v in entry.meta.items() if k != DEAD_LETTERING}
                spool.replace(entry, make_body(route, kept), len(kept), meta)
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


def _mark_dead_lettering(spool: Spool, entry: SpoolEntry, route: str, kept: list[bytes],
                         items: list[bytes], outcome: Outcome) -> SpoolEntry:
    """The segment without its acknowledged items, the refused ones last and counted in its
    meta, in one rename, before they are dead-lettered."""
    refused = [items[i] for rejected in outcome.rejected for i in rejected.indexes]
    meta = {**entry.meta, DEAD_LETTERING: len(refused)}
    return spool.replace(entry, make_body(route, kept + refused), len(kept) + len(refused), meta)


# -- dead letters --------------------------------------------------------------------------

async def replay_dead_letters(path: str | os.PathLike[str], resender: Resender,
                              summary: ReplaySummary) -> None:
    """Claim the dead-letter file (and files abandoned by earlier replays) and replay them."""
    claimed = claim_abandoned(path)
    fresh = claim(path)
    if fresh is not None:
        claimed.append(fresh)
    for claimed_file in claimed:
        await _replay_claimed(claimed_file, Path(path), resender, summary)


async def _replay_claimed(claimed: Path, path: Path, resender: Resender,
                          summary: ReplaySummary) -> None:
    malformed: list[bytes] = []
    writeback = Writeback(path)
    try:
        await _replay_windows(claimed, resender, summary, writeback, malformed)
        with _uninterrupted():
            _set_aside(path, malformed)
            writeback.settle(claimed)
    except OSError as exc:
        writeback.discard()
        summary.items_unsaved += writeback.letters
        log.error("dead letters kept in %s (acknowledged ones may be sent again): could not "
                  "write the %d that failed back to %s: %s", claimed, writeback.letters, path,
                  exc)
        return
    except BaseException:  # stopped (Ctrl-C, SIGTERM): the claimed file stays whole
        writeback.discard()
        raise
    summary.malformed_lines += len(malformed)


async def _replay_windows(claimed: Path, resender: Resender, summary: ReplaySummary,
                          writeback: Writeback, malformed: list[bytes]) -> None:
    """The claimed file's letters, ``_WINDOW_BYTES`` of items at a time: what is not
    delivered is written back as it comes; the server stopping, the rest of the file is
    copied back unread. Memory stays bounded whatever the file's size: a replay read it
    whole and held every letter at once (~2.4x the file: 1.06 GB for 445 MB of letters)."""
    window: list[DeadLetter] = []
    window_bytes = 0
    carried: list[DeadLetter] = []
    for letter, offset in read_dead_letters_at(claimed, lambda _n, line: malformed.append(line)):
        window.append(letter)
        window_bytes += len(letter.item)
        if window_bytes < _WINDOW_BYTES:
            continue
        carried_on = await _replay_window(carried + window, resender, summary, writeback,
                                          last=False)
        if carried_on is None:  # the server stopped answering: the rest stays as it is
            summary.items_kept += writeback.copy_tail(claimed, offset)
            return
        carried, window, window_bytes = carried_on, [], 0
    await _replay_window(carried + window, resender, summary, writeback, last=True)


async def _replay_window(letters: list[DeadLetter], resender: Resender, summary: ReplaySummary,
                         writeback: Writeback, *, last: bool) -> list[DeadLetter] | None:
    """Send ``letters`` (a call's v2 start and end among them joined into one complete
    call), one run of requests per route; write back what is not delivered. Returns the v2
    starts and ends left alone, carried to the next window where their other half may be
    (``[]`` for the last window, or when they would be more than a quarter of one), or
    None if the server stopped answering (then every letter not delivered is written back)."""
    letters, parts = join_alone_pairs(letters)
    carry: list[DeadLetter] = []
    if not last:
        alone = [letter for letter in letters if is_alone_route(letter.route)]
        if sum(len(letter.item) for letter in alone) <= _WINDOW_BYTES // 4:
            carry, kept = alone, {id(letter) for letter in alone}
            letters = [letter for letter in letters if id(letter) not in kept]
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
            back += [part for letter in batch for part in parts.get(id(letter), (letter,))]
            summary.items_kept += len(batch)
            continue
        outcome = await resender.send(route, [letter.item_json for letter in batch])
        _count(summary, outcome)
        summary.calls_joined += sum(id(batch[i]) in parts for i in outcome.acked)
        # a start and end joined into one call go back as the two letters they were
        back += [part for i in outcome.kept for part in parts.get(id(batch[i]), (batch[i],))]
        back += _renewed(batch, outcome, parts)
        stopped = outcome.stopped
    if stopped:
        back += carry
        summary.items_kept += len(carry)
    writeback.add(back)
    return None if stopped else carry


def _ends_last(route_letters: tuple[str, list[DeadLetter]]) -> bool:
    """Sorts the v2 call/end route after every other (a stable sort keeps the rest in the
    file's order): weave's server answers an end whose start it has not stored 404, and a
    start dead-lettered with its end (``start_not_delivered``) is sent first only if its
    route is. In the file's order, the ends went first whenever an end was dead-lettered
    before the first start (its own start delivered): a chaos run (tests/engine/
    test_chaos.py, seed 21) had 2 of 458 letters refused again, 404 "no start found"."""
    return route_letters[0].endswith("/call/end") and route_letters[0].startswith("/v2/")


def _renewed(batch: list[DeadLetter], outcome: Outcome,
             parts: dict[int, tuple[DeadLetter, ...]]) -> Iterator[DeadLetter]:
    """Letters the server refused again, with this replay's reason."""
    for rejected in outcome.rejected:
        reason = f"{rejected.reason}: replay: {rejected.detail}".rstrip(": ")
        for i in rejected.indexes:
            for letter in parts.get(id(batch[i]), (batch[i],)):
                yield msgspec.structs.replace(letter, reason=reason, status=rejected.status)


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
                 compression: str = "auto", compression_level: int = 1) -> ReplaySummary:
    """``engine replay``: the spool (if given), then the dead letters (if the file or
    files claimed by an earlier replay exist); bodies compressed as the engines' are
    (``compression``: "auto" where the server accepts zstd and runs elsewhere)."""
    summary = ReplaySummary()
    _hold_interrupts.set(True)  # this task's context: the command's, not the sender's
    async with Transport(url, api_key=api_key) as transport:
        summary.compression = await _compression(transport, compression)
        compressor = Compressor(compression_level) if summary.compression == "zstd" else None
        resender = Resender(transport, SizeTarget(max_request_bytes), retries=_CLI_RETRIES,
                            compressor=compressor)
        if spool_dir:
            with DeadLetters(dead_letter_path or _default_dead_letters()) as dead:
                await replay_spool(Spool(spool_dir), resender, dead, summary)
        if dead_letter_path:
            await replay_dead_letters(dead_letter_path, resender, summary)
    return summary


async def _compression(transport: Transport, setting: str) -> str:
    """"zstd" or "none", for ``setting`` and what ``/server_info`` says (a server that
    does not answer it: "none" for "auto"; the replay finds out the rest as it sends)."""
    info: object = None
    if setting == "auto":
        with contextlib.suppress(SendError):
            info = await transport.get_json("/server_info")
    chosen, why = choose_compression(setting, info)
    log.debug("replay compression: %s (%s)", chosen, why)
    return chosen


def _default_dead_letters() -> Path:
    from engine.common._config import default_dead_letter_path

    return default_dead_letter_path()
