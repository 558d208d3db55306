"""A fault-injecting loopback trace server for tests.

``FaultServer`` speaks the ingest routes of WIRE.md §3 (plus ``GET /server_info``), stores
every call it accepts merged by ``(project, id)``, counts every delivery so a test can assert
"nothing lost, nothing duplicated", and injects faults drawn from a seeded ``random.Random``.

It runs on its own thread and event loop, so it serves sync tests and async tests (on any
loop, asyncio or uvloop) alike::

    with FaultServer(seed=1, p_500=0.2) as server:          # sync
        ...
    async with FaultServer(seed=1, p_500=0.2) as server:    # async
        ...

``run_on(loop_name, coro)`` runs a coroutine on a fresh asyncio or uvloop loop, so a test
module can parametrize over ``LOOP_NAMES``.

Fault settings are plain attributes and may be changed while it runs. ``p_reset`` drops the
connection before storing; ``p_lost_ack`` stores, then drops it (the acknowledgement is
lost, so a correct client re-sends and ``duplicate_deliveries`` counts it). ``stall_s``
holds each request that long before answering (``stalled`` counts those held now);
``release()`` answers every request held at once (a frozen server thawing), and with
``stall_after_store`` a request is stored before it is held (a proxy holding the answer).
Random faults
apply to the ingest POST routes only; ``limit_bytes`` compares with the body as sent on the wire
(compressed, if it was), as a proxy's body limit would.
"""

from __future__ import annotations

import asyncio
import gzip
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
import uvloop
import zstandard
from aiohttp import web

T = TypeVar("T")
LOOP_NAMES = ("asyncio", "uvloop")

_V2 = r"/v2/(?P<entity>[^/]+)/(?P<project>[^/]+)"
_ROUTES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"/call/upsert_batch"), "upsert_batch"),
    (re.compile(_V2 + r"/calls/complete"), "complete"),
    (re.compile(_V2 + r"/call/start"), "v2_start"),
    (re.compile(_V2 + r"/call/end"), "v2_end"),
    (re.compile(r"/call/start"), "start"),
    (re.compile(r"/call/end"), "end"),
)
_START_FIELDS = ("started_at", "op_name", "inputs", "attributes", "trace_id", "parent_id")
_STOP_TIMEOUT_S = 10.0
_ACCEPT_TURNS = 3  # loop turns from an accept to its connection being listed by aiohttp


@dataclass(frozen=True)
class Item:
    """One call item of a request body: ``kind`` is "start", "end" or "complete"."""

    kind: str
    project: str
    call_id: str
    fields: dict[str, Any]


@dataclass
class RequestRecord:
    """What the server saw and answered for one request."""

    method: str
    path: str
    headers: dict[str, str]
    wire_bytes: int
    status: int = 0  # 0: the connection was reset without an answer
    outcome: str = ""
    call_ids: list[str] = field(default_factory=list)


class BadRequest(Exception):
    """The body could not be decoded; answered with 400."""


class FaultServer:
    """A loopback trace server on its own thread that misbehaves on purpose (see module doc)."""

    def __init__(
        self,
        seed: int = 0,
        *,
        limit_bytes: int | None = None,
        p_429: float = 0.0,
        retry_after: str | None = "0",
        p_500: float = 0.0,
        p_503: float = 0.0,
        p_reset: float = 0.0,
        p_lost_ack: float = 0.0,
        stall_s: float = 0.0,
        stall_after_store: bool = False,
        reject_ids: Iterable[str] = (),
        reject_status: int = 422,
        flaky_answers: Iterable[int] = (),
        complete_mode_required: bool = False,
        accepts_encodings: Iterable[str] | None = ("zstd", "gzip"),
        machine: str | None = None,
        accepts_upsert_batch: bool = False,
        weave_residence: bool = False,
        upsert_route: bool = True,
        end_needs_start: bool = False,
        start_stall_s: float = 0.0,
        start_status: int | None = None,
        start_visible_after_s: float = 0.0,
    ) -> None:
        self.rng = random.Random(seed)
        self.limit_bytes = limit_bytes
        self.p_429 = p_429
        self.retry_after = retry_after
        self.p_500 = p_500
        self.p_503 = p_503
        self.p_reset = p_reset
        self.p_lost_ack = p_lost_ack
        self.stall_s = stall_s
        self.stall_after_store = stall_after_store  # held after storing, not before
        self._release: asyncio.Event | None = None  # set by release(): the held are answered
        self.reject_ids = frozenset(reject_ids)
        self.reject_status = reject_status  # the answer to a body holding one of reject_ids
        # with flaky_answers: those statuses in turn, then the body is stored (a call the
        # server fails on some of the time)
        self.flaky_answers = list(flaky_answers)
        self._flaky = bool(self.flaky_answers)
        self.complete_mode_required = complete_mode_required
        self.accepts_encodings = None if accepts_encodings is None else tuple(accepts_encodings)
        self.machine = machine  # the /server_info token of the machine it runs on, if any
        # says in /server_info that it takes upsert_batch beside calls/complete (engine serve's)
        self.accepts_upsert_batch = accepts_upsert_batch
        # as weave's server (AUTO mode): a project's calls go to the table it already has
        # calls in ("merged": the legacy one, "complete"); an empty project's first v1 write
        # (upsert_batch, call/start, call/end) makes it "merged", its first v2 write
        # "complete"; v1 writes to a "complete" project: 400 CALLS_COMPLETE_MODE_REQUIRED
        self.weave_residence = weave_residence
        self.residence: dict[str, str] = {}
        self.upsert_route = upsert_route  # False: /call/upsert_batch is 404, as a plain proxy's
        # as weave's server: a v2 call/end whose start is not stored is 404 ("Cannot end call
        # …: no start found in project …"), the end not stored
        self.end_needs_start = end_needs_start
        self.start_stall_s = start_stall_s  # v2 call/start requests answered this much later
        self.start_status = start_status  # v2 call/start requests answered this, not stored
        # with end_needs_start: a stored start counts for an end only this long after (weave
        # inserts asynchronously: an acknowledged start may not show yet)
        self.start_visible_after_s = start_visible_after_s
        self._start_seen: dict[tuple[str, str], float] = {}
        self.stored: dict[tuple[str, str], dict[str, Any]] = {}
        self.deliveries: Counter[tuple[str, str, str]] = Counter()
        self.arrivals: list[tuple[str, str]] = []  # (kind, call id) of every item stored, in order
        self.requests: list[RequestRecord] = []
        self.stalled = 0  # requests held in the stall now (received, not answered)
        self.peak_stalled = 0  # the most held at once
        self.port = 0
        self._changed = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._web: web.Server | None = None
        self._listener: asyncio.AbstractServer | None = None
        self._port_hold: socket.socket | None = None  # the port, bound while down()

    # ---- lifecycle -------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultServer:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.name = "faultserver"
        self._thread.start()
        if not ready.wait(_STOP_TIMEOUT_S) or not self.port:
            raise RuntimeError("FaultServer did not start listening")
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_STOP_TIMEOUT_S)
        self._thread = None

    def down(self) -> None:
        """Refuse connections: stop listening and drop every open connection. The port stays
        bound (not listening: connecting is refused), so that no other server's bind to port
        0 is given it meanwhile (up() then failed, and clients reached that other server)."""
        self._call(self._close_listener())
        self._port_hold = _bound(self.port)

    def up(self) -> None:
        """Listen again on the same port."""
        self._call(self._listen())

    def release(self) -> None:
        """Answer every request held in the stall now, not at its ``stall_s`` (the requests
        that come later are held as ``stall_s`` says: set it to 0 first to thaw)."""
        self._call(self._release_held())

    async def _release_held(self) -> None:
        if self._release is not None:
            self._release.set()
            self._release = None

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> FaultServer:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.stop)

    def _run(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._web = web.Server(self._handle, loop=self._loop, auto_decompress=False)
            self._loop.run_until_complete(self._listen())
            ready.set()
            self._loop.run_forever()
        finally:
            ready.set()
            self._loop.close()

    def _call(self, coro: Any) -> Any:
        assert self._loop is not None, "FaultServer is not running"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_STOP_TIMEOUT_S)

    async def _listen(self) -> None:
        assert self._loop is not None and self._web is not None
        sock = _bound(self.port)
        self.port = sock.getsockname()[1]
        self._listener = await self._loop.create_server(self._web, sock=sock)
        if self._port_hold is not None:  # held since down()
            self._port_hold.close()
            self._port_hold = None

    async def _close_listener(self) -> None:
        assert self._loop is not None and self._web is not None
        if self._listener is not None:
            # accept no more, and let the connections already accepted be made first:
            # closed in the same loop turn as an accept, asyncio (3.11) failed making that
            # connection's transport (Server._attach's assertion) and dropped it unclosed,
            # which pytest (warnings as errors) took for a failure of the test
            for sock in self._listener.sockets:
                self._loop.remove_reader(sock.fileno())
            for _ in range(_ACCEPT_TURNS):
                await asyncio.sleep(0)
            self._listener.close()
            self._listener = None
        for connection in self._web.connections:
            if connection.transport is not None:
                connection.transport.abort()

    async def _shutdown(self) -> None:
        assert self._web is not None
        await self._close_listener()
        if self._port_hold is not None:
            self._port_hold.close()
            self._port_hold = None
        await self._web.shutdown(1.0)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- what a test reads -------------------------------------------------------------

    def stored_ids(self, project: str | None = None) -> set[str]:
        with self._changed:
            return {cid for (proj, cid) in self.stored if project in (None, proj)}

    def snapshot(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Every stored call, (project, id) -> its merged fields (a copy)."""
        with self._changed:
            return {key: dict(call) for key, call in self.stored.items()}

    def is_complete(self, project: str, call_id: str) -> bool:
        """True once both the start and the end of the call have been stored."""
        with self._changed:
            call = self.stored.get((project, call_id), {})
            return "started_at" in call and "ended_at" in call

    def duplicate_deliveries(self) -> int:
        """Items received again after the first accepted delivery (same kind, project, id)."""
        with self._changed:
            return sum(count - 1 for count in self.deliveries.values())

    def records(self, path_suffix: str = "") -> list[RequestRecord]:
        with self._changed:
            return [r for r in self.requests if r.path.endswith(path_suffix)]

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 30.0) -> bool:
        """Wait until ``predicate()`` holds (re-checked after every request); False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def wait_stored(self, count: int, timeout_s: float = 30.0) -> bool:
        return self.wait_for(lambda: len(self.stored) >= count, timeout_s)

    # ---- serving -----------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            wire = await request.content.read()
        except (ConnectionResetError, RuntimeError):  # the client hung up mid-upload (its
            raise asyncio.CancelledError from None  # timeout): nothing to answer, nor log
        record = RequestRecord(request.method, request.path, dict(request.headers), len(wire))
        try:
            response = await self._respond(request, wire, record)
        finally:
            self._publish(record)
        if response is None:
            if request.transport is not None:  # else down() dropped it already
                request.transport.abort()
            raise asyncio.CancelledError  # aiohttp drops the connection without answering
        record.status = response.status
        return response

    def _count_stalled(self, change: int) -> None:
        with self._changed:
            self.stalled += change
            self.peak_stalled = max(self.peak_stalled, self.stalled)
            self._changed.notify_all()

    def _publish(self, record: RequestRecord) -> None:
        with self._changed:
            self.requests.append(record)
            self._changed.notify_all()

    async def _respond(
        self, request: web.BaseRequest, wire: bytes, record: RequestRecord
    ) -> web.Response | None:
        if request.method == "GET" and request.path == "/server_info":
            return self._json(200, self._server_info(), record, "server_info")
        route = _route(request.path) if request.method == "POST" else None
        if route is None:
            return self._json(404, {"reason": f"no route {request.method} {request.path}"}, record)
        kind, entity_project = route
        if kind == "v2_start" and self.start_stall_s > 0:
            await asyncio.sleep(self.start_stall_s)
        if self.stall_after_store:
            response = self._answer(request, wire, record, kind, entity_project)
            await self._stall()
            return response
        await self._stall()
        return self._answer(request, wire, record, kind, entity_project)

    async def _stall(self) -> None:
        """Hold the request ``stall_s`` (as it is now), or until ``release()``."""
        if self.stall_s <= 0:
            return
        if self._release is None:
            self._release = asyncio.Event()
        released = self._release
        self._count_stalled(1)
        try:
            await asyncio.wait_for(released.wait(), self.stall_s)
        except asyncio.TimeoutError:
            pass
        finally:
            self._count_stalled(-1)

    def _answer(self, request, wire, record, kind, entity_project) -> web.Response | None:
        """The answer to an ingest request (stored, a fault, a refusal), or None to drop
        the connection unanswered."""
        if kind == "v2_start" and self.start_status is not None:
            return self._json(self.start_status, {"reason": "injected"}, record,
                              str(self.start_status))  # fmt: skip
        fault = self._draw_fault()
        if fault is not None:
            return self._fault(fault, record)
        if self.limit_bytes is not None and len(wire) > self.limit_bytes:
            reason = f"body of {len(wire)} bytes exceeds the {self.limit_bytes}-byte limit"
            return self._json(413, {"reason": reason}, record, "413")
        response = self._ingest(kind, entity_project, request.headers, wire, record)
        if response.status == 200 and self.p_lost_ack and self.rng.random() < self.p_lost_ack:
            record.outcome = "lost_ack"
            return None  # stored, but the client never hears it: its retry is a duplicate
        return response

    def _draw_fault(self) -> str | None:
        draw = self.rng.random()
        for probability, outcome in (
            (self.p_reset, "reset"),
            (self.p_429, "429"),
            (self.p_500, "500"),
            (self.p_503, "503"),
        ):
            if draw < probability:
                return outcome
            draw -= probability
        return None

    def _fault(self, outcome: str, record: RequestRecord) -> web.Response | None:
        record.outcome = outcome
        if outcome == "reset":
            return None
        headers = {"Retry-After": self.retry_after} if outcome == "429" and self.retry_after else {}
        return self._json(int(outcome), {"reason": f"injected {outcome}"}, record, outcome, headers)

    def _ingest(self, kind, entity_project, headers, wire, record) -> web.Response:
        try:
            body = msgspec.json.decode(_decompress(wire, headers.get("Content-Encoding")))
            items = _items(kind, entity_project, body)
        except (BadRequest, msgspec.DecodeError, zstandard.ZstdError, OSError) as exc:
            return self._json(400, {"reason": f"bad request body: {exc}"}, record, "400")
        record.call_ids = [item.call_id for item in items]
        if kind == "upsert_batch" and not self.upsert_route:
            return self._json(404, {"reason": "Not Found"}, record, "404")
        if self.weave_residence and not self._reside(kind, items):
            answer = {"error_code": "CALLS_COMPLETE_MODE_REQUIRED", "reason": "use calls/complete"}
            return self._json(400, answer, record, "complete_mode_required")
        if kind == "upsert_batch" and self.complete_mode_required:
            answer = {"error_code": "CALLS_COMPLETE_MODE_REQUIRED", "reason": "use calls/complete"}
            return self._json(400, answer, record, "complete_mode_required")
        if kind == "v2_end" and self.end_needs_start:
            with self._changed:
                visible = time.monotonic() - self.start_visible_after_s
                unstarted = [i for i in items if "started_at" not in
                             self.stored.get((i.project, i.call_id), {})
                             or self._start_seen.get((i.project, i.call_id), 0.0) > visible]
            if unstarted:
                reason = (f"Cannot end call {unstarted[0].call_id}: no start found in project "
                          f"{unstarted[0].project}")
                return self._json(404, {"reason": reason}, record, "no_start")
        rejected = [item.call_id for item in items if item.call_id in self.reject_ids]
        if rejected and self._flaky:
            if not self.flaky_answers:  # its answers used up: stored from here on
                rejected = []
            else:
                status = self.flaky_answers.pop(0)
                return self._json(status, {"reason": f"flaky on call {rejected[0]}"}, record,
                                  str(status))
        if rejected:
            return self._json(self.reject_status, {"reason": f"invalid call {rejected[0]}"},
                              record, str(self.reject_status))
        self._store(items)
        return self._json(200, _reply(kind, items), record, "stored")

    def _reside(self, kind: str, items: list[Item]) -> bool:
        """weave's table routing: False if a v1 write names a project in calls_complete;
        else the projects of ``items`` that were empty take the table this write goes to."""
        v1 = kind in ("upsert_batch", "start", "end")
        projects = {item.project for item in items}
        if v1 and any(self.residence.get(p) == "complete" for p in projects):
            return False
        for project in projects:
            self.residence.setdefault(project, "merged" if v1 else "complete")
        return True

    def _store(self, items: list[Item]) -> None:
        with self._changed:
            for item in items:
                self.arrivals.append((item.kind, item.call_id))
                self.deliveries[(item.kind, item.project, item.call_id)] += 1
                self.stored.setdefault((item.project, item.call_id), {}).update(item.fields)
                if "started_at" in item.fields:
                    self._start_seen.setdefault((item.project, item.call_id), time.monotonic())

    def _server_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "min_required_weave_python_version": "0.0.0",
            "trace_server_version": "faultserver",
        }
        if self.accepts_encodings is not None:
            info["accepts_encodings"] = list(self.accepts_encodings)
        if self.machine is not None:
            info["machine"] = self.machine
        if self.accepts_upsert_batch:
            info["accepts_upsert_batch"] = True
        return info

    @staticmethod
    def _json(status, payload, record, outcome="", headers=None) -> web.Response:
        record.outcome = outcome or str(status)
        return web.Response(
            status=status,
            body=msgspec.json.encode(payload),
            content_type="application/json",
            headers=headers,
        )


def _bound(port: int) -> socket.socket:
    """A TCP socket bound to 127.0.0.1:``port`` (0: any free one), not listening. With
    SO_REUSEADDR on both, a listening socket may be bound beside a socket holding the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


def _route(path: str) -> tuple[str, str | None] | None:
    for pattern, kind in _ROUTES:
        match = pattern.fullmatch(path)
        if match:
            groups = match.groupdict()
            return kind, (f"{groups['entity']}/{groups['project']}" if groups else None)
    return None


def _decompress(wire: bytes, encoding: str | None) -> bytes:
    if encoding in (None, "", "identity"):
        return wire
    if encoding == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(wire)
    if encoding == "gzip":
        return gzip.decompress(wire)
    raise BadRequest(f"unsupported Content-Encoding {encoding!r}")


def _items(kind: str, entity_project: str | None, body: Any) -> list[Item]:
    if not isinstance(body, dict):
        raise BadRequest("body is not a JSON object")
    if kind == "upsert_batch":
        return [_batch_item(entry) for entry in _list(body, "batch")]
    if kind == "complete":
        return [_item("complete", call, entity_project) for call in _list(body, "batch")]
    if kind in ("v2_start", "start"):
        return [_item("start", _object(body, "start"), entity_project)]
    return [_item("end", _object(body, "end"), entity_project)]


def _batch_item(entry: Any) -> Item:
    mode = entry.get("mode") if isinstance(entry, dict) else None
    if mode not in ("start", "end"):
        raise BadRequest(f"batch item has mode {mode!r}, expected 'start' or 'end'")
    return _item(mode, _object(_object(entry, "req"), mode), None)


def _item(kind: str, call: dict[str, Any], entity_project: str | None) -> Item:
    project = entity_project or call.get("project_id")
    call_id = call.get("id")
    if not isinstance(project, str) or not isinstance(call_id, str):
        raise BadRequest(f"{kind} item lacks project_id or id")
    fields = (
        dict(call) if kind != "end" else {k: v for k, v in call.items() if k not in _START_FIELDS}
    )
    return Item(kind, project, call_id, fields)


def _list(body: dict[str, Any], key: str) -> list[Any]:
    value = body.get(key)
    if not isinstance(value, list):
        raise BadRequest(f"{key!r} must be a list")
    return value


def _object(body: dict[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key)
    if not isinstance(value, dict):
        raise BadRequest(f"{key!r} must be an object")
    return value


def _reply(kind: str, items: list[Item]) -> dict[str, Any]:
    if kind == "upsert_batch":
        return {"res": [_start_reply(item) if item.kind == "start" else {} for item in items]}
    if kind in ("v2_start", "start"):
        return _start_reply(items[0])
    return {}


def _start_reply(item: Item) -> dict[str, Any]:
    return {"id": item.call_id, "trace_id": item.fields.get("trace_id")}


def run_on(loop_name: str, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a new "asyncio" or "uvloop" event loop, then close it."""
    loop = uvloop.new_event_loop() if loop_name == "uvloop" else asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
