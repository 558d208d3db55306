"""Sending stored items again, re-batched to the server's limit like the live path.

Replay (spool segments, dead letters) is the cold path: it may decode a stored body into
its items (``msgspec.Raw``: the bytes stay as they were) and cut them into new bodies. A
413 lowers the size target and re-cuts the batch; a 422 halves it until the bad item is
alone; an item the server still rejects alone comes back as rejected, with its reason, for
the dead letters; a transient failure (after ``retries``) stops the run and hands back every
item not acknowledged, to keep for later. Nothing waits behind an item the server refuses.
An upsert batch refused with CALLS_COMPLETE_MODE_REQUIRED (weave's server, for a project in
its calls_complete table), or answered 404 or 405 (a server without the route), is sent
again as one v2 call/start or call/end request per item, as the live sender does.
Bodies are compressed as the live sender's are where a ``Compressor`` is given (the replay
of an outage's letters is when there is most to send: uncompressed, it crossed the link at
several times the bytes).
A v2 call/end answered 404 "no start found" is sent again until ``NO_START_WAIT_S`` after
the last request that could have held its start was acknowledged (or the Resender began):
weave's server inserts asynchronously, and the start a replay sent just before may not
show yet; a start that has not shown by then is not coming, and the ends after it are
refused at their first 404 instead of waiting as long again one after the other.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import random
import re
import time
from dataclasses import dataclass, field

import msgspec

from engine.common._errors import SendError
from engine.common._project import project_path
from engine.common._retry import (
    ISOLATE_MAX_IN_A_ROW,
    WEB_PAGE_REASON,
    Backoff,
    Verdict,
    classify,
    retry_after_s,
    start_not_found,
)
from engine.sender._adaptive import SizeTarget
from engine.sender._transport import Compressor, Response, Transport

_BATCH_ROUTE_SUFFIXES = ("/calls/complete", "/call/upsert_batch")
_BATCH_PREFIX = b'{"batch":['
_BATCH_SUFFIX = b"]}"
_REASON_BYTES = 300


def is_batch_route(route: str) -> bool:
    """Whether a body on ``route`` is ``{"batch": [items]}`` (else the body is the item)."""
    return route.endswith(_BATCH_ROUTE_SUFFIXES)


class _Batch(msgspec.Struct):
    batch: list[msgspec.Raw]


def split_body(route: str, body: bytes) -> list[bytes]:
    """The items of a stored request body, byte for byte."""
    if not is_batch_route(route):
        return [body]
    try:
        return [bytes(raw) for raw in msgspec.json.decode(body, type=_Batch).batch]
    except RecursionError:  # an item nested deeper than the decoder's stack: cut by a scan
        return _scanned_items(body)


# a JSON string (escapes included), or one of the marks that cut a body into its items
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},]')


def _scanned_items(body: bytes) -> list[bytes]:
    """The items of a body this engine wrote (``{"batch":[item,item]}``), cut at the commas
    between them without decoding them; ValueError for any other body."""
    if not (body.startswith(_BATCH_PREFIX) and body.endswith(_BATCH_SUFFIX)):
        raise ValueError("not a batch body this engine wrote")
    start, end = len(_BATCH_PREFIX), len(body) - len(_BATCH_SUFFIX)
    items, depth = [], 0
    for token in _TOKEN.finditer(body, start, end):
        mark = body[token.start()]
        if mark in b"[{":
            depth += 1
        elif mark in b"]}":
            depth -= 1
        elif mark == ord(",") and depth == 0:
            items.append(body[start:token.start()])
            start = token.end()
    items.append(body[start:end])
    return items


def make_body(route: str, items: list[bytes]) -> bytes:
    if not is_batch_route(route):
        (item,) = items
        return item
    return b"".join((_BATCH_PREFIX, b",".join(items), _BATCH_SUFFIX))


class _Ids(msgspec.Struct):
    id: str | None = None
    project_id: str | None = None


class _Upsert(msgspec.Struct):
    mode: str
    req: dict[str, msgspec.Raw]


def as_v2_single(item: bytes) -> tuple[str, bytes] | None:
    """(route, body) of an upsert batch's start or end item as a v2 call/start or call/end
    request of its own (its start or end byte for byte); None for any other item."""
    try:
        wrapped = msgspec.json.decode(item, type=_Upsert)
        inner = wrapped.req[wrapped.mode] if wrapped.mode in ("start", "end") else None
        project = msgspec.json.decode(inner, type=_Ids).project_id if inner else None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError, KeyError):
        return None
    if not project or project.count("/") != 1:
        return None
    body = b"".join((b'{"', wrapped.mode.encode(), b'":', bytes(inner), b"}"))
    return f"/v2/{project_path(project)}/call/{wrapped.mode}", body


class _Wrapped(msgspec.Struct):
    mode: str | None = None
    req: dict[str, _Ids] | None = None
    start: _Ids | None = None
    end: _Ids | None = None


def describe(route: str, item: bytes) -> tuple[str | None, str]:
    """(call id, project) of a stored item, for its dead letter; unknown parts are empty."""
    try:
        if route.endswith("/calls/complete"):
            ids = msgspec.json.decode(item, type=_Ids)
        else:
            wrapped = msgspec.json.decode(item, type=_Wrapped)
            ids = wrapped.start or wrapped.end or next(iter((wrapped.req or {}).values()), _Ids())
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):  # kept as its text
        return None, ""
    return ids.id, ids.project_id or ""


@dataclass
class Rejected:
    """Items (indexes into what was sent) the server refused for good, and why."""

    reason: str  # too_large, invalid, http
    status: int | None
    detail: str
    indexes: list[int]


@dataclass
class Outcome:
    acked: list[int] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)  # not acknowledged: send again later
    requests: int = 0
    wire_bytes: int = 0  # request bodies as sent (compressed, if they were)
    splits_413: int = 0
    splits_500: int = 0
    # the server stopped answering: what follows would fail as well (else what is kept is
    # calls it answered 500 alone while it took others: the replay goes on past them)
    stopped: bool = False


# how long after the last acknowledged request that could hold a start a v2 call/end
# answered 404 "no start found" is sent again: weave's server inserts asynchronously, and a
# start acknowledged just before (the replay sends the starts first) shows within moments
NO_START_WAIT_S = 10.0


class Resender:
    """POSTs stored items on their route in bodies of at most ``size.bytes``."""

    def __init__(self, transport: Transport, size: SizeTarget, *, retries: int = 0,
                 backoff: Backoff | None = None, no_start_wait_s: float | None = None,
                 compressor: Compressor | None = None,
                 executor: concurrent.futures.Executor | None = None) -> None:
        self.transport = transport
        self.compressor = compressor  # zstd bodies (on ``executor``, else the loop's default)
        self.executor = executor
        self.size = size
        self.retries = retries
        self.no_start_wait_s = NO_START_WAIT_S if no_start_wait_s is None else no_start_wait_s
        # when the last request that could hold a start was acknowledged (or this began): an
        # end's start acknowledged before then shows by ``no_start_wait_s`` after it
        self._start_acked_s = time.monotonic()
        self.backoff = backoff or Backoff(initial_ms=200, max_ms=5_000)
        self.rng = random.Random()

    async def send(self, route: str, items: list[bytes]) -> Outcome:
        outcome = Outcome()
        batched = is_batch_route(route)
        queue = collections.deque(self._cut(items, list(range(len(items))), batched))
        failing: list[int] = []  # answered 500 alone (see below)
        halves_of_500: set[int] = set()  # id() of the pieces of a piece answered 500
        errors_500_in_a_row = 0
        while queue:
            piece = queue.popleft()
            half = id(piece) in halves_of_500
            halves_of_500.discard(id(piece))
            body = make_body(route, [items[i] for i in piece])
            # a half is tried once: its whole was retried, and a 500 now is its call's
            response, error = await self._post(route, body, outcome, retries=0 if half else None)
            verdict = classify(response.status if response else None,
                              response.body if response else b"", error)
            status = response.status if response else None
            errors_500_in_a_row = errors_500_in_a_row + 1 if status == 500 else 0
            if verdict is Verdict.OK:
                self.size.on_success(len(body))
                outcome.acked += piece
            elif status == 500 and errors_500_in_a_row <= ISOLATE_MAX_IN_A_ROW:
                # weave's server answers 500 to a call it fails on: halves find it, and the
                # rest goes on (before, the first 500 kept every letter behind it: one such
                # call held a dead-letter file back for good); every answer 500: kept below
                if len(piece) > 1:
                    outcome.splits_500 += 1
                    halves = _halves(piece)
                    halves_of_500.update(map(id, halves))
                    queue.extendleft(halves[::-1])
                else:
                    failing += piece
            elif verdict is Verdict.RETRY:
                outcome.kept = failing + piece + [i for rest in queue for i in rest]
                outcome.stopped = True
                return outcome
            elif verdict is Verdict.SPLIT_413 and len(piece) > 1:
                self.size.on_413(len(body))
                outcome.splits_413 += 1
                queue.extendleft(reversed(self._recut(items, piece)))
            elif verdict is Verdict.SPLIT_422 and len(piece) > 1:
                queue.extendleft(_halves(piece)[::-1])
            elif _upsert_refused(route, verdict, response):
                unsent = await self._send_singles(items, piece, outcome)
                if unsent:
                    outcome.kept = failing + unsent + [i for rest in queue for i in rest]
                    outcome.stopped = True
                    return outcome
            else:
                if verdict is Verdict.SPLIT_413:
                    self.size.on_413(len(body))
                outcome.rejected.append(_rejected(verdict, response, piece))
        outcome.kept = failing  # sent again by the next replay, as the server may be fixed
        outcome.stopped = bool(failing) and not outcome.acked and not outcome.rejected
        return outcome

    async def _send_singles(self, items: list[bytes], piece: list[int],
                            outcome: Outcome) -> list[int]:
        """``piece``'s upsert items, each as a v2 request; the indexes not settled when the
        server stopped answering (empty when every one was acked or rejected)."""
        for n, i in enumerate(piece):
            single = as_v2_single(items[i])
            if single is None:
                outcome.rejected.append(Rejected("http", 400, "not a start or end item", [i]))
                continue
            response, error = await self._post(*single, outcome)
            verdict = classify(response.status if response else None,
                               response.body if response else b"", error)
            if verdict is Verdict.OK:
                outcome.acked.append(i)
            elif verdict is Verdict.RETRY:
                return piece[n:]
            else:
                outcome.rejected.append(_rejected(verdict, response, [i]))
        return []

    async def _post(self, route: str, body: bytes, outcome: Outcome, *,
                    retries: int | None = None) -> tuple[Response | None, SendError | None]:
        """One POST, retried ``retries`` (default: the Resender's) times while the answer
        is transient, and while it is 404 "no start found" until ``no_start_wait_s`` after
        the last acknowledged request that could hold the start (a start not showing yet).
        Before, each such end waited ``no_start_wait_s`` of its own, one after the other: a
        replay of 1,000 ends whose starts the server never got (refused, or sent to another
        server) took 10,000 s."""
        retries = self.retries if retries is None else retries
        encoding = None
        if self.compressor is not None:
            body, encoding = await self.compressor.compress_async(body, self.executor), "zstd"
        attempt = 0
        while True:
            attempt += 1
            outcome.requests += 1
            outcome.wire_bytes += len(body)
            response = error = None
            try:
                response = await self.transport.post(route, body, content_encoding=encoding)
            except SendError as exc:
                error = exc
            if response is not None and start_not_found(response.status, response.body):
                left_s = self._start_acked_s + self.no_start_wait_s - time.monotonic()
                if left_s <= 0:
                    return response, error
                await asyncio.sleep(min(left_s, self.backoff.delay_s(attempt, self.rng, None)))
                continue
            verdict = classify(response.status if response else None,
                               response.body if response else b"", error)
            if verdict is Verdict.OK and not route.endswith("/call/end"):
                self._start_acked_s = time.monotonic()
            if verdict is not Verdict.RETRY or attempt > retries:
                return response, error
            hint = retry_after_s(response.headers) if response else None
            await asyncio.sleep(self.backoff.delay_s(attempt, self.rng, hint))

    def _cut(self, items: list[bytes], indexes: list[int], batched: bool) -> list[list[int]]:
        """Consecutive pieces of at most the size target (an item larger goes alone)."""
        if not batched:
            return [[i] for i in indexes]
        limit = self.size.bytes - len(_BATCH_PREFIX) - len(_BATCH_SUFFIX)
        pieces: list[list[int]] = []
        current: list[int] = []
        used = 0
        for i in indexes:
            size = len(items[i]) + 1
            if current and used + size > limit:
                pieces.append(current)
                current, used = [], 0
            current.append(i)
            used += size
        if current:
            pieces.append(current)
        return pieces

    def _recut(self, items: list[bytes], piece: list[int]) -> list[list[int]]:
        """A rejected piece cut to the lowered target; at least in two."""
        pieces = self._cut(items, piece, True)
        if len(pieces) > 1:
            return pieces
        middle = len(piece) // 2
        return [piece[:middle], piece[middle:]]


def _upsert_refused(route: str, verdict: Verdict, response: Response | None) -> bool:
    """Whether the server refused an upsert batch as the live sender's v2 fallback does:
    CALLS_COMPLETE_MODE_REQUIRED (weave, a calls_complete project), or 404/405 (no such
    route: a server or proxy without it). Before, a replay took a 404 for a refusal of the
    items and kept them (the chaos test, seed 456: 33 letters of an upsert probe past its
    deadline toward a server without the route)."""
    if not route.endswith("/call/upsert_batch"):
        return False
    return verdict is Verdict.COMPLETE_MODE_REQUIRED or (
        response is not None and response.status in (404, 405))


def _halves(piece: list[int]) -> tuple[list[int], list[int]]:
    middle = len(piece) // 2
    return piece[:middle], piece[middle:]


def _rejected(verdict: Verdict, response: Response | None, piece: list[int]) -> Rejected:
    status = response.status if response else None
    reason = {Verdict.SPLIT_413: "too_large", Verdict.SPLIT_422: "invalid"}.get(verdict, "http")
    detail = response.body[:_REASON_BYTES].decode("utf-8", "replace") if response else ""
    if response is not None and 200 <= response.status < 300:  # not JSON: a web page
        detail = WEB_PAGE_REASON
    return Rejected(reason, status, detail, piece)
