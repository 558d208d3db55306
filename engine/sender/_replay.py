"""``engine replay``: re-send spool segments and dead letters, removing what was acknowledged.

Spool segments hold whole request bodies with their route; each is POSTed as is and deleted
once the server answers 2xx. Dead letters hold single items; they are re-sent one request
per item (a complete call or upsert item inside a one-item batch, a v2 start/end as the
whole body) and the file is rewritten, atomically, with only the items that failed again.
The server's upsert by call id makes a repeat harmless, so a replay interrupted half-way
can simply be run again.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import msgspec

from engine.common._errors import SendError
from engine.sender._deadletter import DeadLetter, read_dead_letters
from engine.sender._spool import Spool, SpoolCorrupt
from engine.sender._transport import Transport

log = logging.getLogger("engine.replay")
_BATCH_ROUTE_SUFFIXES = ("/calls/complete", "/call/upsert_batch")


class ReplaySummary(msgspec.Struct, kw_only=True):
    segments_sent: int = 0
    segments_failed: int = 0
    segments_corrupt: int = 0
    dead_letters_sent: int = 0
    dead_letters_failed: int = 0


def dead_letter_body(letter: DeadLetter) -> bytes:
    """The request body that carries one dead-lettered item on its route."""
    if letter.route.endswith(_BATCH_ROUTE_SUFFIXES):
        return b'{"batch":[' + letter.item_json + b"]}"
    return letter.item_json


async def _send(transport: Transport, route: str, body: bytes, what: str) -> bool:
    try:
        response = await transport.post(route, body)
    except SendError as exc:
        log.warning("%s: not delivered: %s", what, exc)
        return False
    if 200 <= response.status < 300:
        return True
    log.warning("%s: server answered %d: %s", what, response.status, response.body[:200])
    return False


async def replay_spool(transport: Transport, directory: str, summary: ReplaySummary) -> None:
    spool = Spool(directory)
    for entry in spool.pending():
        try:
            route, body = spool.load(entry)
        except SpoolCorrupt as exc:
            summary.segments_corrupt += 1
            log.error("%s", exc)
            continue
        if await _send(transport, route, body, f"spool segment {entry.name}"):
            spool.done(entry)
            summary.segments_sent += 1
        else:
            summary.segments_failed += 1


async def replay_dead_letters(transport: Transport, path: str, summary: ReplaySummary) -> None:
    kept: list[DeadLetter] = []
    for letter in read_dead_letters(path):
        what = f"dead letter {letter.call_id or '?'} ({letter.reason})"
        if await _send(transport, letter.route, dead_letter_body(letter), what):
            summary.dead_letters_sent += 1
        else:
            summary.dead_letters_failed += 1
            kept.append(letter)
    _rewrite(path, kept)


def _rewrite(path: str, kept: list[DeadLetter]) -> None:
    """Replace the file by the letters still undelivered (removed when none is left)."""
    if not kept:
        os.unlink(path)
        return
    tmp = Path(f"{path}.replay-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(b"".join(msgspec.json.encode(letter) + b"\n" for letter in kept))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


async def replay(url: str, spool_dir: str | None, dead_letter_path: str | None,
                 api_key: str | None = None) -> ReplaySummary:
    summary = ReplaySummary()
    async with Transport(url, api_key=api_key) as transport:
        if spool_dir:
            await replay_spool(transport, spool_dir, summary)
        if dead_letter_path and os.path.exists(dead_letter_path):
            await replay_dead_letters(transport, dead_letter_path, summary)
    return summary
