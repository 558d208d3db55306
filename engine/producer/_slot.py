"""Where a tracer's items go: this process's ring slot for the engine, and writing into it.

A slot is single-producer: every tracer of one engine in one process writes through the same
``_ProcessSlot``, claimed on the first write and given back when the last of them closes (or
the process ends); a forked child forgets its parent's and claims its own. ``SlotWriting`` is
the Tracer's half that puts encoded items into the slot and settles what the one-call paths
leave: a doorbell, a full ring (``on_full``), an error.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing.util
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import msgspec

from engine import ring
from engine.common._control import Control, control_path
from engine.common._errors import (
    Closed,
    ConfigError,
    EncodeError,
    NoRingSlot,
    PayloadTooLarge,
    RingFull,
    SharedMemoryFull,
)
from engine.producer._calls import CallsBase
from engine.producer._sanitise import REASONS, invalid_item
from engine.ring import _files as ring_files
from engine.wire import _codec
from engine.wire.calls import end_splice_offset

log = logging.getLogger("engine.producer")
_WRITTEN, _UNPLANNED = ring.WRITTEN, ring.UNPLANNED
_ENVELOPE_BYTES = 64  # room for the batch envelope around the largest single item
_ENCODERS = _codec.producer_encoders()  # (lenient, strict)
# what each count of the encoders and the sanitiser adds to (common/_control.py)
# the control block's counter of each reason the encoders and the sanitiser count
_COUNTERS = {"stringified": "stringified", **{r: f"sanitised_{r}" for r in REASONS}}
# after a claim found no room in /dev/shm, the next try waits this long (each try reserves)
_NO_ROOM_RETRY_S = 1.0
_live_tracers: weakref.WeakSet[SlotWriting] = weakref.WeakSet()


class _ProcessSlot:
    """The ring slot this process writes into for one engine, shared by all its tracers of
    that engine: a slot is single-producer, and tracers come and go (a Pool task unpickles
    one per task; a slot each would run out after ``max_slots`` tasks). Given back when the
    last tracer that wrote through it closes, or when the process ends."""

    __slots__ = ("writer", "max_payload", "limit_setting", "fast_put", "fast_start",
                 "fast_end", "projects", "open", "closed", "no_room_said")

    def __init__(self, writer: ring.SlotWriter, limits: tuple[int, str], fast_put: Any,
                 fast_calls: tuple[Any, Any], projects: dict[str, bytes]) -> None:
        self.writer = writer
        self.max_payload, self.limit_setting = limits  # the bytes, and what sets them
        self.fast_put = fast_put
        self.fast_start, self.fast_end = fast_calls
        self.projects = projects  # project_id -> bytes, bound to the writer's fast path
        self.open = 0  # tracers using it that have not closed
        self.no_room_said = False  # logged that /dev/shm had no room for the rest of the ring


def write_deferred(spec: ring.RingSpec, deadline_s: float) -> bool:
    """Write the ends a Ctrl-C interrupted in this process (``_write_slow``) into ``spec``'s
    ring set, waiting for room until ``deadline_s`` (the engine closing: its sender still
    delivers, so room comes); those not written (the deadline passed, or a second Ctrl-C
    stopped it) are counted ``dropped_full`` on their slots. Returns whether a second
    Ctrl-C did."""
    mine = [entry for entry in _process.deferred if entry[0] == spec]
    if not mine:
        return False
    _process.deferred = [entry for entry in _process.deferred if entry[0] != spec]
    written, interrupted = 0, False
    try:
        for _, writer, args in mine:
            remaining_s = max(0.0, deadline_s - time.monotonic())
            if not _process.lock.acquire(timeout=remaining_s):
                break
            try:
                if not writer.write(*args, timeout_s=remaining_s):
                    break
            finally:
                _process.lock.release()
            written += 1
    except KeyboardInterrupt:
        interrupted = True
    left = [writer.slot for _, writer, _ in mine[written:]]
    if left:
        control = _control_of(spec)
        for slot in left:
            control.slot_add(slot, "dropped_full")
        control.close()
    log.log(logging.ERROR if left else logging.INFO,
            "engine: wrote the ends of %d calls that waited for room in a full ring when "
            "Ctrl-C or the close came%s",
            written, f"; {len(left)} not (counted dropped_full): "
            + ("a second Ctrl-C" if interrupted else "the engine closed first") if left else "")
    return interrupted


def _keep(spec: ring.RingSpec, writer: ring.SlotWriter, args: tuple) -> None:
    """A call's end (``args``: its record) that could not wait for room: written by the
    engine's close (``write_deferred``), or, in a process that does not own the engine (a
    Pool worker, any child), as that process exits (``_write_kept_at_exit``)."""
    _process.deferred.append((spec, writer, args))
    if spec not in _process.owned and not _process.exit_hooked:
        _process.exit_hooked = True
        atexit.register(_write_kept_at_exit)  # an interpreter's exit
        # a multiprocessing child's: it ends by os._exit, after its finalizers
        multiprocessing.util.Finalize(None, _write_kept_at_exit, exitpriority=10)


def own(spec: ring.RingSpec) -> None:
    """This process owns ``spec``'s engine: its close writes the ends kept here."""
    _process.owned.add(spec)


# how long a process that does not own the engine waits, as it exits, for room for the ends
# a Ctrl-C kept (the owner's sender makes it; the server down, the spool takes them)
KEPT_ENDS_AT_EXIT_S = 5.0


def _write_kept_at_exit() -> None:
    """A child's (a Pool worker's) kept ends: its engine's close, in the owner, cannot
    write them, and without them the calls stay open on the server for good. Written as the
    child exits, for up to ``KEPT_ENDS_AT_EXIT_S`` (those that are not: counted and said by
    ``write_deferred``)."""
    deadline_s = time.monotonic() + KEPT_ENDS_AT_EXIT_S
    for spec in dict.fromkeys(entry[0] for entry in _process.deferred):
        if spec in _process.owned:
            continue
        try:
            write_deferred(spec, deadline_s)
        except (Closed, OSError) as exc:  # the engine closed meanwhile: nothing reads them
            log.warning("engine: the ends of calls kept at this process's exit were not "
                        "written: %s", exc)


def _control_of(spec: ring.RingSpec) -> Control:
    return Control(control_path(os.path.dirname(spec.lock_path)), spec.max_slots)


def close_tracers(spec: ring.RingSpec, deadline_s: float,
                  before_close: Callable[[], Any] | None = None,
                  writes_cut: Callable[[], Callable[[], int]] | None = None) -> bool:
    """Close every tracer of this process writing into ``spec``'s ring set, the ones
    unpickled here too (the engine closes: no call starts any more). A write another
    thread has waiting for room in a full ring (holding the lock the closes take) stops
    waiting first, Closed raised to its caller: a start is counted ``dropped_full``; a
    call's end (its start is in the ring: without it the call stays open on the server for
    good) is kept and written here once the tracers are closed, with the ends a Ctrl-C
    interrupted (``write_deferred``, which counts those it could not), waiting for room
    until ``deadline_s``. Until then a closed tracer still takes a call's end
    (``_closing_slot``: a thread ending its call as the close runs).

    ``before_close`` (the engine ends the calls left open: ``end_open_calls``) runs once the
    tracers are closed and the starts and ends other threads had begun (``writes_cut``: a
    start written, its call not yet among the open calls; an end whose call was taken out
    of them) landed, waited for until ``deadline_s``; the close stops taking ends once
    those begun before its last look landed too, and none is left to write. Returns
    whether a second Ctrl-C stopped it."""
    writers = [slot.writer for key, slot in list(_process.slots.items()) if key[0] == spec]

    def land_writes_begun() -> None:  # their threads write them once they run again
        if writes_cut is not None:
            left = writes_cut()
            while left() > 0 and time.monotonic() < deadline_s:
                time.sleep(0.001)

    interrupted = False
    _process.closing.add(spec)
    try:
        while True:
            for writer in writers:  # no lock: a waiting write holds it
                writer.abandoned = True  # (stops waiting: an end is kept, written below)
            for tracer in list(_live_tracers):
                if tracer._spec == spec:
                    tracer.close()
            land_writes_begun()
            if before_close is not None:
                before_close()
            with _process.lock:
                for writer in writers:
                    writer.abandoned = False
            interrupted = write_deferred(spec, deadline_s) or interrupted
            if not interrupted:
                land_writes_begun()  # (an end kept meanwhile: written in one more round)
            with _process.lock:
                if interrupted or not any(entry[0] == spec for entry in _process.deferred):
                    _process.closing.discard(spec)  # from here, an end is Closed
                    break
    finally:
        _process.closing.discard(spec)
    with _process.lock:  # slots of tracers dropped without close(): given back too, or the
        for key in [key for key in _process.slots if key[0] == spec]:  # sender would wait
            _process.slots.pop(key).writer.close()  # for this live process to write more
    return interrupted


class _Process:
    """What the tracers of this process share; a fresh one in a forked child."""

    def __init__(self) -> None:
        self.slots: dict[tuple[ring.RingSpec, ProducerSettings], _ProcessSlot] = {}
        # A slot is single-producer: threads of one process take turns on the slow paths
        # (the one-call paths are atomic). A fresh lock after fork: another thread may have
        # held the old one.
        self.lock = threading.RLock()
        # engines whose ring set had no room or no free slot for this process: (retry
        # after, error)
        self.no_room: dict[tuple[ring.RingSpec, ProducerSettings], tuple[float, Closed]] = {}
        self.said_unread = False  # the error that a ring nobody reads drops calls, said once
        # the full-ring lines (waiting, dropping): said at once, then at most once a
        # minute with what happened meanwhile -- key -> [last said, times since]
        self.said_full: dict[str, list] = {}
        # ends a Ctrl-C (or SystemExit) interrupted while they waited for room in a full
        # ring: (spec, writer, record args), written as the engine closes (write_deferred)
        self.deferred: list[tuple[ring.RingSpec, ring.SlotWriter, tuple]] = []
        self.closing: set[ring.RingSpec] = set()  # in close_tracers: its writers stay open
        self.owned: set[ring.RingSpec] = set()  # engines this process made (``own``)
        self.exit_hooked = False  # _write_kept_at_exit registered here


_process = _Process()
SAY_FULL_EVERY_S = 60.0


def _say_full(key: str, message: str, *args: Any) -> None:
    """A full ring's line, ending in ``%s``: at once the first time, then at most once every
    ``SAY_FULL_EVERY_S`` in this process, adding how often it happened meanwhile. Before, a
    long outage had every waiting thread say it every ``max_block_ms``, and ``on_full="drop"``
    a line per dropped call (thousands a second)."""
    now = time.monotonic()
    said = _process.said_full.get(key)
    if said is not None and now - said[0] < SAY_FULL_EVERY_S:
        said[1] += 1
        return
    since = ""
    if said is not None and said[1]:
        since = f"; {said[1]:,} more time{'s' if said[1] != 1 else ''} in the last {now - said[0]:.0f} s"
    _process.said_full[key] = [now, 0]
    log.warning(message, *args, since)


# a thread waiting for room in a full ring: since when (monotonic), while it waits
_room_wait = threading.local()
# how long a wait for room counts as holding the lock for lock_held_here: a signal deferred
# until the lock is given back must not wait on a server that does not answer
ROOM_WAIT_HELD_S = 1.0


def lock_held_here() -> bool:
    """Whether this thread holds the lock the process's tracers take on their slow paths
    (a doorbell, a full ring, a claim): another thread's write may wait for it. A write
    waiting for room in a full ring counts only for its first ``ROOM_WAIT_HELD_S``: room
    comes when the sender is acknowledged, which may be never (a server down or frozen),
    and a Ctrl-C or SIGTERM deferred while it holds (the weave integration's guard) must
    then be handled in the wait, not after it."""
    if not _process.lock._is_owned():  # type: ignore[attr-defined]
        return False
    since = getattr(_room_wait, "since", None)
    return since is None or time.monotonic() - since < ROOM_WAIT_HELD_S


class ProducerSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The part of the engine's configuration a producer needs (picklable)."""

    project: str
    max_block_ms: int
    on_full: str
    strict: bool
    max_request_bytes: int


class SlotWriting(CallsBase):  # type: ignore[misc,valid-type]
    """The Tracer's writing half: its slot, the general write path, and what the one-call
    paths leave to settle."""

    def __init__(self, spec: ring.RingSpec, settings: ProducerSettings) -> None:
        self._spec = spec
        self._settings = settings
        self._encoder = _ENCODERS[1] if settings.strict else _ENCODERS[0]
        self._ringset: ring.RingSet | None = None
        self._control: Control | None = None
        self._closed = False
        self._projects: dict[str, bytes] = {}
        self._forget_slot()
        _live_tracers.add(self)

    def _forget_slot(self) -> None:
        """Drop the claimed slot: a forked child must never write into its parent's slot.

        The shared mappings stay valid in a child, so only the slot is given up; the child
        claims its own on its first write.
        """
        self._slot: _ProcessSlot | None = None
        # The writer's one-call hot path (see SlotWriter.fast_put), None until a slot is
        # claimed or where there is none. Used without the lock: each call is atomic.
        self._fast_put: Any = None
        # The same for call_start / call_end (see SlotWriter.fast_calls).
        self._fast_start: Any = None
        self._fast_end: Any = None

    @property
    def _lock(self) -> threading.RLock:
        return _process.lock

    @property
    def _writer(self) -> ring.SlotWriter | None:
        return None if self._slot is None else self._slot.writer

    @property
    def _max_payload(self) -> int:
        return 0 if self._slot is None else self._slot.max_payload

    def _written_slot(self) -> _ProcessSlot | None:
        """The slot this process writes through for this engine, if any tracer claimed it."""
        return self._slot or _process.slots.get((self._spec, self._settings))

    def _close_slot(self) -> None:
        """Closed from here on; the slot goes back when the last tracer using it closes."""
        with self._lock:
            self._closed = True
            self._fast_put = self._fast_start = self._fast_end = None
            slot, self._slot = self._slot, None
            if slot is not None:
                slot.open -= 1
                if slot.open == 0 and self._spec not in _process.closing:  # the last tracer
                    # here that wrote (closing: close_tracers writes the ends left first)
                    slot.writer.close()
                    key = (self._spec, self._settings)
                    if _process.slots.get(key) is slot:
                        del _process.slots[key]

    def _fast_failed(self, fast: Any, current: Any, error: BaseException | None = None,
                     item: Any = None, is_end: bool = False) -> None:
        """A one-call path raised ``error`` while it wrote ``item``: a writer released by
        a close() that ran while the call was on its way (``current`` is then no longer
        ``fast``) is Closed; a value it could not encode, the EncodeError naming it
        (nothing was written); anything else stands."""
        _codec.take_counts()  # the item's: it was not written
        if current is not fast:
            raise Closed("this tracer is closed") from None
        if error is not None and is_invalid_input(error):
            raise self._invalid(item, error, "end" if is_end else "start") from error

    def _emit(self, kind: int, flags: int, item: msgspec.Struct, project: str,
              call_id: str | bytes, trace_id: str | bytes | None, what: str,
              splice: bool) -> None:
        """``_put`` through the writer's one-call path when there is one."""
        fast = self._fast_put
        if fast is not None:
            try:
                result = fast(item, kind, flags, splice)
            except ValueError:
                self._fast_failed(fast, self._fast_put)
                raise
            if (result == _WRITTEN and not _codec.Stringified.count
                    and not _codec.Stringified.unencodable):
                return
            if result != _UNPLANNED:
                self._settle(result, kind, flags, item, call_id, trace_id, what, splice)
                return
        self._put(kind, flags, item, project, call_id, trace_id, what, splice)

    def _settle(self, result: Any, kind: int, flags: int, item: msgspec.Struct,
                call_id: str | bytes, trace_id: str | bytes | None, what: str,
                splice: bool) -> None:
        """What the one-call path did not finish: the doorbell, a full ring (its bytes came
        back with the code: nothing is encoded twice), an error, the stringified count."""
        code, payload = result if type(result) is tuple else (result, None)
        try:
            if code != _WRITTEN:
                project_b = self._projects[item.project_id]  # put_item only takes bound ones
                end_waits = code == ring.NO_ROOM and kind == ring.KIND_END
                try:
                    self._lock.acquire()
                except (KeyboardInterrupt, SystemExit):  # Ctrl-C while another thread holds
                    if end_waits:  # it waiting for room: this call's end too is kept
                        self._keep_end(flags, project_b, call_id, trace_id, payload, splice)
                    raise
                try:
                    writer = self._writer
                    if writer is None:
                        if end_waits and self._spec in _process.closing and self._keep_end(
                                flags, project_b, call_id, trace_id, payload, splice):
                            raise Closed("the engine closed while this call's end waited for "
                                         "room in its ring (the close writes it)")
                        if code != ring.WRITTEN_RING:
                            raise Closed("this tracer is closed")
                    else:
                        self._put_slow(writer, code, kind, flags, project_b, call_id, trace_id,
                                       what, splice, payload)
                finally:
                    self._lock.release()
        except BaseException:
            _codec.take_counts()  # the item's: it was not written
            raise
        self._add_counts(_codec.take_counts())

    def _keep_end(self, flags: int, project_b: bytes, call_id: str | bytes,
                  trace_id: str | bytes | None, payload: bytes | None, splice: bool) -> bool:
        """A call's end that met a full ring and could not wait its turn (a Ctrl-C, the
        engine closing this tracer): kept for the close to write (``close_tracers``), as one
        whose wait for room was stopped is; False where it cannot be."""
        slot = _process.slots.get((self._spec, self._settings))
        if slot is None or payload is None:
            return False
        aux = end_splice_offset(payload) if splice else 0
        _keep(self._spec, slot.writer,
              (ring.KIND_END, flags, call_id, trace_id, project_b, payload, aux))
        return True

    def _put(self, kind: int, flags: int, item: msgspec.Struct, project: str,
             call_id: str | bytes, trace_id: str | bytes | None, what: str,
             splice: bool = False) -> None:
        """Encode ``item`` once and write it into this process's slot (one C call when the
        accelerator is built). Ids are UUID text or raw bytes; ``what`` names the item in
        errors (``start`` -> ``start.id``); ``splice``: an end, whose record carries the
        offset where its payload fields begin."""
        project_b = self._projects.get(project) or self._project_bytes(project)
        try:
            with self._lock:
                writer, max_payload = self._writer, self._max_payload
                if writer is None:
                    slot = self._closing_slot(kind)
                    writer, max_payload = ((slot.writer, slot.max_payload) if slot is not None
                                           else (self._claim(), self._max_payload))
                try:
                    code = writer.put(self._encoder, item, kind, flags, call_id, trace_id,
                                      project_b, max_payload, splice)
                except ValueError:
                    if self._closed:  # closed by a value's hook while it was encoded
                        raise Closed("this tracer is closed") from None
                    raise
                if code != ring.WRITTEN:
                    self._put_slow(writer, code, kind, flags, project_b, call_id, trace_id,
                                   what, splice)
        except BaseException:
            _codec.take_counts()  # the item's: it was not written
            raise
        self._add_counts(_codec.take_counts())

    def _closing_slot(self, kind: int) -> _ProcessSlot | None:
        """A call's end written through this closed tracer while its engine closes (under
        the lock): the slot still open for the ends left (``close_tracers``). Its start is
        in the ring: without the end the call stayed open on the server for good (a thread
        ending its call as the close ran; the close's own ends of the calls left open)."""
        if kind != ring.KIND_END or self._spec not in _process.closing:
            return None
        return _process.slots.get((self._spec, self._settings))

    def _put_slow(self, writer: ring.SlotWriter, code: int, kind: int, flags: int,
                  project_b: bytes, call_id: str | bytes, trace_id: str | bytes | None,
                  what: str, splice: bool, payload: bytes | None = None) -> None:
        """Anything but a plain write: the doorbell, a full ring, or an error to raise."""
        if payload is None:  # the bytes put encoded (None if it stopped before)
            payload = writer.take_refused()
        if code in (ring.WRITTEN_RING, ring.BAD_CALL_ID, ring.BAD_TRACE_ID):
            writer.outcome(code, project_b, b"", call_id, trace_id, what)  # rings or raises
            return
        if code == ring.OVER_MAX_PAYLOAD:
            limit, setting = self._grow(writer, len(payload))
            if limit:
                self._control_block().slot_add(writer.slot, "too_large")
                raise PayloadTooLarge(_id_text(call_id), len(payload), limit,
                                      limit_setting=setting)
            code = ring.NO_ROOM  # its room is reserved now: written below, as into a full ring
        aux = end_splice_offset(payload) if splice else 0  # raises if there is no ended_at
        if not writer.outcome(code, project_b, payload, call_id, trace_id, what):
            self._write_slow(writer, (kind, flags, call_id, trace_id, project_b, payload, aux),
                             _id_text(call_id))

    def _grow(self, writer: ring.SlotWriter, payload_len: int) -> tuple[int, str]:
        """An item over the slot's item limit: if only the claim's part of the ring is
        reserved (items up to a quarter of it) and the item fits the whole ring, reserve the
        rest (once per process) and raise the limit: ``(0, "")``, write it. Else the limit
        it is over and what sets it: the request or the ring, or the room /dev/shm had
        (logged once)."""
        slot = self._slot
        whole_limit = self._limits(writer, whole=True)
        if slot is None or writer.whole_reserved or payload_len > whole_limit[0]:
            return whole_limit
        try:
            writer.reserve_whole()
        except SharedMemoryFull as exc:
            if not slot.no_room_said:
                slot.no_room_said = True
                log.error("engine: %s; items over %d bytes are refused", exc, slot.max_payload)
            return slot.max_payload, "room in shared memory for this process's ring"
        slot.max_payload, slot.limit_setting = whole_limit
        fast_put = writer.fast_put(self._encoder, slot.max_payload, slot.projects)
        if fast_put is not None:  # the C writer, re-bound to the new limit
            slot.fast_put = self._fast_put = fast_put
        return 0, ""

    def _write_slow(self, writer: ring.SlotWriter, args: tuple, call_id: str) -> None:
        """The ring is full: wait up to max_block_ms, then apply the on_full policy."""
        started = _room_wait.since = time.monotonic()
        unread = False
        written = writer.records_written()
        try:
            ok = writer.write(*args, timeout_s=self._settings.max_block_ms / 1000)
            while not ok and self._settings.on_full == "block" and not writer.abandoned:
                unread = self._nobody_reads()
                if unread:
                    break
                _say_full("waiting", "ring slot %d full: a call has waited %.0f s for room; "
                          "still waiting (the sender's log says why: a slow or failing server, "
                          "or its spool at its bound)%s", writer.slot,
                          time.monotonic() - started)
                ok = writer.write(*args, timeout_s=self._settings.max_block_ms / 1000 or 1.0)
        except (KeyboardInterrupt, SystemExit):
            # Ctrl-C while a call's end waits for room (the server slow or down): its start
            # is in the ring, and without the end the call stayed open on the server for
            # good. The end is written as the engine closes, once its sender made room.
            if args[0] == ring.KIND_END and writer.records_written() == written:
                _keep(self._spec, writer, args)
            raise
        finally:
            _room_wait.since = None
        control = self._control_block()
        control.slot_add(writer.slot, "blocked_ms", int((time.monotonic() - started) * 1000))
        if ok:
            return
        if unread:  # waiting would be for ever: the program goes on, the call is counted
            control.slot_add(writer.slot, "dropped_full")
            if not _process.said_unread:
                _process.said_unread = True
                log.error("call %s not traced: its ring is full and no sender will read it "
                          "again (the engine that made it closed, or its process ended, and "
                          "its sender left); this process's calls are dropped from here on, "
                          "counted dropped_full; what the ring holds goes to the next Engine "
                          "for its URL or `engine replay --to URL`", call_id)
            return
        if writer.abandoned and args[0] == ring.KIND_END:  # the engine is closing: a call's
            # end is written by the close itself, once the sender made room (its start is in
            # the ring: without its end the call stayed open on the server for good)
            _keep(self._spec, writer, args)
            raise Closed(f"the engine closed while call {call_id}'s end waited for room in "
                         "its ring (the close writes it)")
        if writer.abandoned:  # the engine is closing (close_tracers): this one is not written
            control.slot_add(writer.slot, "dropped_full")
            raise Closed(f"the engine closed while call {call_id} waited for room in its "
                         "ring (counted dropped_full)")
        if self._settings.on_full == "raise":
            control.slot_add(writer.slot, "raised_full")
            raise RingFull(f"ring slot {writer.slot} stayed full for "
                           f"{self._settings.max_block_ms} ms; call {call_id} not enqueued")
        control.slot_add(writer.slot, "dropped_full")
        _say_full("dropped", "call %s not traced: its ring stayed full for max_block_ms=%d "
                  "(on_full='drop'; counted dropped_full)%s", call_id,
                  self._settings.max_block_ms)

    def _nobody_reads(self) -> bool:
        """The ring set is marked closed (its sender left for good: ``ring.mark_closed``)
        and none of its senders runs (a recovery would publish its own pid)."""
        if not os.path.exists(os.path.join(os.path.dirname(self._spec.lock_path),
                                           ring.CLOSED_MARK)):
            return False
        return not any(pid > 0 and ring_files.process_start_ticks(pid) is not None
                       for pid in self._control_block().sender_pids())

    def _claim(self) -> ring.SlotWriter:
        with self._lock:
            return self._writer or self._claim_locked()

    def _claim_locked(self) -> ring.SlotWriter:
        if self._closed:
            raise Closed("this tracer is closed")
        key = (self._spec, self._settings)
        slot = _process.slots.get(key)
        if slot is None:  # this process's first write into this engine
            ringset = self._ensure_attached()
            refused = _process.no_room.get(key)
            if refused is not None and time.monotonic() < refused[0]:
                raise refused[1]
            try:
                # every slot taken: the sender frees a dead producer's once it is drained;
                # only the first try waits (a traced call is never held up again)
                wait_s = 0.0 if refused is not None else self._settings.max_block_ms / 1000
                writer = ringset.writer(wait_s=wait_s)
            except SharedMemoryFull as exc:  # said once per process, then counted per call
                if refused is None:
                    log.error("engine: this process cannot trace: %s", exc)
                _process.no_room[key] = (time.monotonic() + _NO_ROOM_RETRY_S, exc)
                raise
            except ring.NoFreeSlot as exc:  # the same: said once, counted per call
                error = NoRingSlot(
                    f"{exc}: this process does not trace until one is freed (each process "
                    f"that traces holds one until it ends; raise max_slots, now "
                    f"{self._spec.max_slots})")  # fmt: skip
                if refused is None:
                    log.error("engine: this process cannot trace: %s", error)
                _process.no_room[key] = (time.monotonic() + _NO_ROOM_RETRY_S, error)
                raise error from None
            except Exception as exc:
                raise Closed(f"cannot claim a ring slot: {exc}") from exc
            _process.no_room.pop(key, None)
            limits = self._limits(writer)
            projects = dict(self._projects)
            slot = _process.slots[key] = _ProcessSlot(
                writer, limits, writer.fast_put(self._encoder, limits[0], projects),
                writer.fast_calls(), projects)
        else:
            slot.projects.update(self._projects)
        slot.open += 1
        self._slot = slot
        self._projects = slot.projects
        self._fast_put, self._fast_start, self._fast_end = (
            slot.fast_put, slot.fast_start, slot.fast_end)
        return slot.writer

    def _limits(self, writer: ring.SlotWriter, whole: bool = False) -> tuple[int, str]:
        """The largest payload one item may have, and the setting that bounds it: the
        request limit, or the ring (twice ring_bytes, less room for any project's bytes
        besides the payload) when it is smaller. Until a larger item reserved the whole
        ring (``_grow``), the part of it the claim reserved bounds what the writer is given
        (``whole``: the bound once it is reserved)."""
        by_request = self._settings.max_request_bytes - _ENVELOPE_BYTES
        by_ring = writer.max_record_bytes if whole else writer.reserved_record_bytes
        return (by_request, "max_request_bytes") if by_request <= by_ring else (
            by_ring, "twice ring_bytes")

    def _item_limit(self) -> int:
        """The largest payload one item may have (claims the slot if need be)."""
        self._writer or self._claim()
        return self._max_payload

    def _invalid(self, item: Any, error: BaseException, what: str) -> EncodeError:
        return invalid_item(item, error, self._settings.strict, what)

    def _ensure_attached(self) -> ring.RingSet:
        if self._ringset is None:
            try:
                self._ringset = ring.RingSet.attach(self._spec)
            except FileNotFoundError:
                raise Closed("the engine that owned this tracer is closed") from None
        return self._ringset

    def _control_block(self) -> Control:
        if self._control is None:
            self._control = _control_of(self._spec)
        return self._control

    def _project_bytes(self, project: str) -> bytes:
        from engine.common._config import check_project

        try:
            check_project(project, "project_id")
        except ConfigError as exc:
            raise EncodeError(str(exc), field="project_id", reason="invalid") from None
        encoded = self._projects[project] = project.encode()
        return encoded

    def _add_counts(self, counts: dict[str, int]) -> None:
        """Add what the encoders or the sanitiser counted (by reason) to this slot's."""
        if not counts:
            return
        writer = self._writer or self._claim()
        control = self._control_block()
        for reason, n in counts.items():
            control.slot_add(writer.slot, _COUNTERS[reason], n)

    def _count_dropped(self, error: BaseException | None = None) -> None:
        writer = self._writer
        if isinstance(error, (SharedMemoryFull, NoRingSlot)):  # no slot: the owner's cell
            reason = "untraced_no_slot" if isinstance(error, NoRingSlot) else \
                "untraced_no_shared_memory"
            with self._ensure_attached().slot_lock():  # other slot-less processes add too
                self._control_block().add(reason)
        elif writer is not None:
            self._control_block().slot_add(writer.slot, "wrapper_dropped")



def _id_text(call_id: str | bytes) -> str:
    return call_id if isinstance(call_id, str) else _codec.uuid_text(call_id)


def is_invalid_input(error: BaseException) -> bool:
    """Raised by converting or encoding an item (not a closed tracer, a full ring)."""
    if isinstance(error, (Closed, RingFull)):
        return False
    return isinstance(error, (ValueError, TypeError, RecursionError, OverflowError,
                              msgspec.MsgspecError))



def _after_fork_in_child() -> None:
    global _process
    _process = _Process()  # the parent's slots are not this process's
    for tracer in list(_live_tracers):
        tracer._forget_slot()


os.register_at_fork(after_in_child=_after_fork_in_child)
