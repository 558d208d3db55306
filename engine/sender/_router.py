"""Ring records to deliverable items for the current target, without decoding JSON.

:class:`Router`: ``upsert`` wraps each start/end for ``/call/upsert_batch``; ``complete``
pairs a start with its end by call id and splices one complete-call item. A start still
waiting for its end is held in a table; after ``eager_start_ms`` (or when it pins too much
of its ring, or on flush) it goes out on its own, and its end later. To a server that takes
``/call/upsert_batch`` beside calls/complete (``accepts_upsert_batch`` in its
``/server_info``: ``engine serve``) both go as items of upsert batches. To any other, each
goes as a request of its own, through v2 ``call/start`` and ``call/end`` (single-item routes:
weave's server has no v2 route that takes a batch of starts or of ends), until the project
may try upsert batches (``probe_upsert``): weave's server decides per project which table a
call goes to, from where the project's calls already are, and takes ``/call/upsert_batch``
for a project whose calls are in its legacy table (and for every project when it runs with
that table only); for a project in calls_complete it answers CALLS_COMPLETE_MODE_REQUIRED,
and an empty project would take the batch and be pinned to the legacy table. So a project
is tried once a v2 request of it (calls/complete, call/start, call/end) was acknowledged
(it is not empty) and ``UPSERT_PROBE_DELAY_S`` passed; one that refuses gets v2 requests
from then on (:meth:`Router.refuse_upsert`; :func:`as_single` makes the refused batch's
items v2 requests).
Thousands of calls open at once (an asyncio eval awaiting a rate-limited model) send
thousands of starts alone: one request each cost the sender ~1 ms, and the producers, whose
rings the unsent starts pinned, waited for them (bench/open_calls.py, docs/throughput.md).
"""

from __future__ import annotations

import collections
import time

from engine import ring
from engine.common._project import project_path
from engine.sender._batcher import Item

_KIND_START, _KIND_END, _KIND_COMPLETE = ring.KIND_START, ring.KIND_END, ring.KIND_COMPLETE
_KIND_SPLICED, _KIND_RUN = ring.KIND_SPLICED, ring.KIND_RUN

UPSERT_ROUTE = "/call/upsert_batch"
# A project whose v2 request was acknowledged tries upsert batches this long after: weave's
# server inserts into ClickHouse asynchronously, and a project whose first rows are not yet
# visible looks empty, where an upsert batch would go to the legacy table beside them (the
# project's calls then split over two tables, and reads see one)
UPSERT_PROBE_DELAY_S = 2.0
_UPSERT_START = b'{"mode":"start","req":{"start":'
_UPSERT_END = b'{"mode":"end","req":{"end":'
_UPSERT_CLOSE = b"}}"
_V2_START = b'{"start":'
_V2_END = b'{"end":'
_V2_CLOSE = b"}"


# project -> route, per route kind: made once per project (the hot path asks per item)
_COMPLETE_ROUTES: dict[bytes, str] = {}
_V2_START_ROUTES: dict[bytes, str] = {}
_V2_END_ROUTES: dict[bytes, str] = {}


def _v2_route(cache: dict[bytes, str], project: bytes, suffix: str) -> str:
    """``/v2/{entity}/{project}/<suffix>``, remembered in ``cache``."""
    route = cache.get(project)
    if route is None:
        route = cache[project] = f"/v2/{project_path(project.decode())}/{suffix}"
    return route


def complete_route(project: bytes) -> str:
    return _v2_route(_COMPLETE_ROUTES, project, "calls/complete")


def v2_start_route(project: bytes) -> str:
    return _v2_route(_V2_START_ROUTES, project, "call/start")


def v2_end_route(project: bytes) -> str:
    return _v2_route(_V2_END_ROUTES, project, "call/end")


def _item(parts: tuple[bytes, ...], first: ring.Record, refs: tuple[int, ...], route: str,
          single: bool = False, ends_carry_trace: bool = True) -> Item:
    """An item of one record's payload wrapped in ``parts`` (ending with the separator)."""
    size = sum(map(len, parts)) - 1
    return _new_tuple(Item, (parts, size, refs, route, single, first.call_id, first.project,
                             first.trace_id, first.enqueue_ns, ends_carry_trace, 1, b""))


_new_tuple = tuple.__new__
_SEPARATOR = b","


def as_upsert(item: Item) -> Item:
    """A v2 call/start or call/end request's item as an item of an upsert batch (the
    inverse of :func:`as_single`)."""
    wrapper, payload = item.parts[0], item.parts[1]
    opening = _UPSERT_START if wrapper == _V2_START else _UPSERT_END
    parts = (opening, payload, _UPSERT_CLOSE, _SEPARATOR)
    return item._replace(parts=parts, size=sum(map(len, parts)) - 1, route=UPSERT_ROUTE,
                         single=False)


def as_single(item: Item) -> Item:
    """An upsert item of a start or an end (one record) as a v2 call/start or call/end
    request of its own, settling the same ring record."""
    wrapper, payload = item.parts[0], item.parts[1]
    if wrapper == _UPSERT_START:
        parts, route = (_V2_START, payload, _V2_CLOSE, _SEPARATOR), v2_start_route(item.project)
    else:
        parts, route = (_V2_END, payload, _V2_CLOSE, _SEPARATOR), v2_end_route(item.project)
    return item._replace(parts=parts, size=sum(map(len, parts)) - 1, route=route, single=True)


class Router:
    """Records → items for the current target mode (``complete`` or ``upsert``)."""

    def __init__(self, mode: str, max_item_bytes: int, alone_batched: bool = False) -> None:
        self.mode = mode
        self.max_item_bytes = max_item_bytes
        # complete mode: starts sent before their end, and those ends, go in upsert batches
        # (the server said it takes them) instead of one v2 request each
        self.alone_batched = alone_batched
        # complete mode toward a server that does not say it takes upsert batches: a project
        # tries them UPSERT_PROBE_DELAY_S after its first acknowledged v2 request
        # (project -> that time), or not at all once it refused them (project -> None)
        self.probe_upsert = False
        self.upsert_from: dict[bytes, float | None] = {}
        # complete mode: v2 call/start requests not yet settled (acknowledged, or on disk),
        # and the ends of those calls, which wait for them: weave's server answers a v2
        # call/end whose start it has not stored 404 ("Cannot end call …: no start found"),
        # and two requests in flight arrive in any order (:meth:`start_settled`)
        self.starts_unsettled: dict[tuple[bytes, bytes], None] = {}
        self.ends_after_start: dict[tuple[bytes, bytes], Item] = {}
        # complete mode: records waiting for their partner, by raw call id (insertion ordered)
        self.pending_starts: dict[tuple[bytes, bytes], tuple[ring.Record, int, float]] = {}
        self.pending_ends: dict[tuple[bytes, bytes], tuple[ring.Record, int, float]] = {}
        # starts sent on their own: their end goes to v2 call/end (bounded, oldest evicted)
        self.started_alone: collections.OrderedDict[tuple[bytes, bytes], None] = collections.OrderedDict()
        self.started_alone_max = 1_000_000
        # records of a kind no route carries, with their refs and why: the caller dead-letters them
        self.unroutable: list[tuple[ring.Record, int, str]] = []
        self.eager_starts = 0
        # of them, starts sent as v2 requests of their own because they held their ring's
        # space (not for their age): what a larger ring_bytes would have kept paired
        self.pinned_alone = 0
        self.spliced = 0
        self._pins_looked_at: dict[int, int] = {}  # read positions at the last look for pins

    def route(self, records: list[ring.Record], refs: list[int]) -> list[Item]:
        """Items for ``records`` (``refs`` from :meth:`ReleaseTracker.track`), in read order.

        A record waiting for its partner makes no item yet; one of an unknown kind goes to
        ``unroutable``.
        """
        items: list[Item] = []
        if self.mode == "upsert":
            for record, ref in zip(records, refs):
                self._direct(items, record, ref)
        else:
            self._route_complete(items, records, refs)
        return items

    def _route_complete(self, items: list[Item], records: list[ring.Record],
                        refs: list[int]) -> None:
        """Pair starts with ends and splice each pair into one item.

        One loop with local names and the splice inline: it runs for every record.
        """
        starts, ends, started_alone = self.pending_starts, self.pending_ends, self.started_alone
        max_item_bytes = self.max_item_bytes
        spliced = 0
        now = time.monotonic()  # the whole read arrived at once
        for record, ref in zip(records, refs):
            kind = record.kind
            if kind in (_KIND_RUN, _KIND_SPLICED):
                # the reader joined complete calls side by side (a run: aux of them), or
                # paired a start with its adjacent end
                payload, project = record.payload, record.project
                run = kind == _KIND_RUN
                spliced += record.aux if run else 1
                items.append(_new_tuple(Item, (
                    (payload, _SEPARATOR), len(payload), (ref,),
                    _COMPLETE_ROUTES.get(project) or complete_route(project), False,
                    record.call_id, project, record.trace_id, record.enqueue_ns, True,
                    record.aux if run else 1, record.calls if run else b"")))
                continue
            if kind == _KIND_END:
                key = (record.project, record.call_id)
                waiting = starts.pop(key, None)
                if waiting is None:
                    if key in started_alone:
                        del started_alone[key]
                        self._end_after_start(items, record, ref)
                    else:
                        ends[key] = (record, ref, now)
                    continue
                start, start_ref, _seen = waiting
                end, end_ref = record, ref
            elif kind == _KIND_START:
                key = (record.project, record.call_id)
                waiting = ends.pop(key, None)
                if waiting is None:
                    starts[key] = (record, ref, now)
                    continue
                start, start_ref = record, ref
                end, end_ref, _seen = waiting
            else:
                self._direct(items, record, ref)
                continue
            start_payload, end_payload, splice = start.payload, end.payload, end.aux
            size = len(start_payload) + len(end_payload) - splice  # "}" makes way for ","
            if size > max_item_bytes:  # too big together: each goes alone (the server merges them)
                items.append(self._v2_start(start, start_ref))
                self.started_alone.pop((start.project, start.call_id), None)
                self._end_after_start(items, end, end_ref)
                continue
            project = start.project
            spliced += 1
            items.append(_new_tuple(Item, (
                (start_payload[:-1], _SEPARATOR, end_payload[splice:], _SEPARATOR), size,
                (start_ref, end_ref), _COMPLETE_ROUTES.get(project) or complete_route(project),
                False, start.call_id, project, start.trace_id, start.enqueue_ns, True, 1, b"")))
        self.spliced += spliced

    def _direct(self, items: list[Item], record: ring.Record, ref: int) -> None:
        kind = record.kind
        if kind == _KIND_START:
            parts = (_UPSERT_START, record.payload, _UPSERT_CLOSE, _SEPARATOR)
            items.append(_item(parts, record, (ref,), UPSERT_ROUTE))
        elif kind == _KIND_END:
            parts = (_UPSERT_END, record.payload, _UPSERT_CLOSE, _SEPARATOR)
            items.append(_item(parts, record, (ref,), UPSERT_ROUTE,
                               ends_carry_trace=bool(record.flags & ring.FLAG_END_HAS_TRACE)))
        elif kind in (_KIND_COMPLETE, _KIND_SPLICED):  # spliced: only read in complete mode
            items.append(_item((record.payload, _SEPARATOR), record, (ref,),
                               complete_route(record.project)))
        else:
            self.unroutable.append((record, ref, f"record kind {kind} has no route "
                                                 "(written by a newer producer?)"))

    def takes_upsert(self, project: bytes) -> bool:
        """Whether what goes alone of ``project`` goes in an upsert batch."""
        if self.alone_batched:
            return self.upsert_from.get(project, 0.0) is not None
        if not self.probe_upsert:
            return False
        since = self.upsert_from.get(project)
        return since is not None and time.monotonic() >= since

    def v2_acked(self, project: bytes) -> None:
        """A v2 request of ``project`` (calls/complete, call/start, call/end) was
        acknowledged: it has calls, and may try upsert batches after UPSERT_PROBE_DELAY_S
        (unless it refused them)."""
        if project not in self.upsert_from:
            self.upsert_from[project] = time.monotonic() + UPSERT_PROBE_DELAY_S

    def refuse_upsert(self, projects: set[bytes], server_wide: bool) -> None:
        """The server refused an upsert batch of ``projects`` (CALLS_COMPLETE_MODE_REQUIRED),
        or has no such route (``server_wide``): v2 requests from now on."""
        if server_wide:
            self.probe_upsert = self.alone_batched = False
        for project in projects:
            self.upsert_from[project] = None

    def _v2_start(self, record: ring.Record, ref: int) -> Item:
        """A start sent before its end: an upsert item, or a v2 call/start request."""
        self.eager_starts += 1
        key = (record.project, record.call_id)
        self.started_alone[key] = None
        if len(self.started_alone) > self.started_alone_max:
            self.started_alone.popitem(last=False)
        if self.takes_upsert(record.project):
            parts = (_UPSERT_START, record.payload, _UPSERT_CLOSE, _SEPARATOR)
            return _item(parts, record, (ref,), UPSERT_ROUTE)
        self.starts_unsettled[key] = None
        parts = (_V2_START, record.payload, _V2_CLOSE, _SEPARATOR)
        return _item(parts, record, (ref,), v2_start_route(record.project), single=True)

    def _end_after_start(self, items: list[Item], record: ring.Record, ref: int) -> None:
        """The end of a call whose start went alone: sent now, or once its start's v2
        request is settled."""
        items.extend(self.hold_ends([self._v2_end(record, ref)]))

    def hold_ends(self, items: list[Item]) -> list[Item]:
        """``items`` (v2 requests, each its own batch), but the ends of calls whose start is
        among them or still unsettled: those wait for it (see :meth:`start_settled`)."""
        for item in items:
            if item.parts[0] == _V2_START:
                self.starts_unsettled[(item.project, item.call_id)] = None
        sent = []
        for item in items:
            key = (item.project, item.call_id)
            if item.parts[0] == _V2_END and key in self.starts_unsettled:
                self.ends_after_start[key] = item
            else:
                sent.append(item)
        return sent

    def start_settled(self, items: list[Item] | tuple[Item, ...]) -> list[Item]:
        """``items`` were settled (acknowledged, or on disk): the ends that waited for the v2
        call/start requests among them, as items to send (none for the others)."""
        ends: list[Item] = []
        if not self.starts_unsettled:
            return ends
        for item in items:
            if item.parts[0] != _V2_START and item.parts[0] != _UPSERT_START:
                continue  # (a v2 start regrouped into an upsert batch is settled there)
            key = (item.project, item.call_id)
            self.starts_unsettled.pop(key, None)
            waiting = self.ends_after_start.pop(key, None)
            if waiting is not None:
                ends.append(waiting)
        return ends

    def ends_waiting(self) -> list[Item]:
        """Every end still waiting for its start's request (the sender's exit: both are
        persisted, the start first)."""
        ends = list(self.ends_after_start.values())
        self.ends_after_start.clear()
        self.starts_unsettled.clear()
        return ends

    def _v2_end(self, record: ring.Record, ref: int) -> Item:
        """An end whose start went alone: an upsert item, or a v2 call/end request."""
        carries_trace = bool(record.flags & ring.FLAG_END_HAS_TRACE)
        if self.takes_upsert(record.project):
            parts = (_UPSERT_END, record.payload, _UPSERT_CLOSE, _SEPARATOR)
            return _item(parts, record, (ref,), UPSERT_ROUTE, ends_carry_trace=carries_trace)
        parts = (_V2_END, record.payload, _V2_CLOSE, _SEPARATOR)
        return _item(parts, record, (ref,), v2_end_route(record.project), single=True,
                     ends_carry_trace=carries_trace)

    def expire(self, older_than_s: float, read_pos: dict[int, int] | None = None,
               pin_limit_bytes: int = 0, everything: bool = False,
               lap_bytes: int = 0) -> list[Item]:
        """Send waiting records on their own when they waited ``older_than_s``, when more
        than ``pin_limit_bytes`` of their ring were read after them (they pin its space), or
        when a flush asks for ``everything``.

        With ``lap_bytes`` (the ring's lap: small records fill its first half, and the
        second is skipped as padding when the lap ends) the padding a lap's end skipped is
        not counted as read: a record read in the lap before the reading's goes once
        ``pin_limit_bytes`` plus half a lap were read after it. Counted, every record held
        across a lap's end went alone, however little was written after it.

        The tables are in read order, so the look for old records stops at the first young
        one; the look for pinning ones goes through every record, so it is made only once a
        ring was read a sixteenth of ``pin_limit_bytes`` on since the last (with 10,000
        calls held, a look at every read took 80% of the sender's time).
        """
        cutoff = time.monotonic() - older_than_s
        read_pos = read_pos or {}
        pins = bool(pin_limit_bytes) and self._read_on(read_pos, pin_limit_bytes // 16)
        padding = lap_bytes // 2
        items: list[Item] = []
        for table, make in ((self.pending_starts, self._v2_start), (self.pending_ends, self._v2_end)):
            due, pinned = [], set()
            for key, (record, _ref, seen) in table.items():
                if everything or seen <= cutoff:
                    due.append(key)
                    continue
                if not pins:
                    break  # the rest were read later: younger still
                read = read_pos.get(record.slot, 0)
                limit = pin_limit_bytes
                if lap_bytes and read // lap_bytes != record.end_pos // lap_bytes:
                    limit += padding
                if read - record.end_pos > limit:
                    due.append(key)
                    pinned.add(key)
            for key in due:
                record, ref, _seen = table.pop(key)
                item = make(record, ref)
                items.append(item)
                if key in pinned and item.single and make == self._v2_start:
                    self.pinned_alone += 1
        return items

    def _read_on(self, read_pos: dict[int, int], step_bytes: int) -> bool:
        """Whether a ring was read ``step_bytes`` on since this last said so."""
        looked = self._pins_looked_at
        if not any(pos - looked.get(slot, 0) >= step_bytes for slot, pos in read_pos.items()):
            return False
        self._pins_looked_at = dict(read_pos)
        return True

    def oldest_pending_s(self) -> float | None:
        oldest = None
        for table in (self.pending_starts, self.pending_ends):
            for _record, _ref, seen in table.values():
                oldest = seen if oldest is None else min(oldest, seen)
                break  # dicts keep insertion order: the first is the oldest
        return oldest

    def held(self) -> int:
        return len(self.pending_starts) + len(self.pending_ends) + len(self.ends_after_start)
