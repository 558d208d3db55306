"""The :class:`Engine`: owns the shared memory and the sender process.

    with engine.Engine(url="http://127.0.0.1:6345", project="entity/project") as eng:
        tracer = eng.producer()           # picklable; use it in any child process
        with tracer.call("predict", inputs={"x": 1}) as call:
            call.output = 2
        eng.flush(timeout_s=10)           # True once everything enqueued so far is acknowledged
        print(eng.stats())
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import msgspec

from engine import ring
from engine.common import _logging
from engine.common._config import (
    SIGTERM_TIMEOUT_S,
    EngineConfig,
    api_key_source,
    default_dead_letter_path,
    load_config,
    persisted_to,
    sender_count,
    spool_path,
)
from engine.common._control import Control, control_path
from engine.common._errors import Closed, ConfigError, EngineError
from engine.common._files import dir_problem
from engine.common._http import check_outbound
from engine.common._machine import platform_problem
from engine.common._redact import redact_url
from engine.common._wait import wait_exit
from engine.native import _accel
from engine.producer._flush import (
    ring_doorbell,
    unacknowledged,
    wait_heads_released,
    wait_released,
)
from engine.producer._handle import end_open_calls, writes_cut
from engine.producer._slot import ProducerSettings, close_tracers, own
from engine.producer._tracer import Tracer

__all__ = ["Engine"]

log = logging.getLogger("engine")

_SENDER_RESTART_MIN_S = 0.5
_EXIT_GRACE_S = 1.0  # a settled sender exits within its next housekeeping pass
_STUCK_GRACE_S = 5.0  # past the shutdown deadline: a sender still settling is stuck
_SAY_WAITING_S = 1.0  # close() still waiting for delivery after this long: it says so
_CLOSE_RESTARTS = 3  # a sender that dies in close() is started again at most this often


class Engine:
    """Owns the ring set and the sender process; a context manager.

    Arguments override ``ENGINE_*`` environment variables, which override the TOML file
    (``config_file`` or ``$ENGINE_CONFIG``), which overrides the defaults; see
    ``config/engine.toml`` for every setting.
    """

    def __init__(self, url: str | None = None, project: str | None = None, *,
                 config_file: str | None = None, **config: Any) -> None:
        if (unsupported := platform_problem()) is not None:
            raise EngineError(unsupported)
        self.config: EngineConfig = load_config(config_file, url=url, project=project, **config)
        # where the key came from (never the key): the sender says it if the server refuses it
        self._key_from = ("the api_key given to Engine()" if config.get("api_key") is not None
                          else api_key_source(config_file))
        _logging.check_env()  # the sender logs with them: a typo is said here, not in a loop
        if not self.config.project:
            raise ConfigError("project", 'required, e.g. Engine(project="entity/project")')
        self._spool_dir = _spool_dir(self.config)
        if self.config.start_sender:  # the sender's proxy and CAs: said now, not at its start
            check_outbound(self.config.url)
        senders = sender_count(self.config)
        # twice ring_bytes per slot: items up to half of ring_bytes cycle through the first
        # ring_bytes of each lap (what a slot touches, as before); a larger one, up to twice
        # ring_bytes, may take the whole lap (engine/ring/_writer.py)
        self._ringset = _create_rings(self.config, senders)
        self._ring_dir = os.path.dirname(self._ringset.spec.lock_path)
        own(self._ringset.spec)
        self._control = Control(control_path(self._ring_dir), self.config.max_slots, create=True,
                                senders=senders)
        self._settings = ProducerSettings(
            project=self.config.project, max_block_ms=self.config.max_block_ms,
            on_full=self.config.on_full, strict=self.config.strict,
            max_request_bytes=self.config.max_request_bytes,
        )
        self._owner_pid = os.getpid()
        self._closed = False
        self._exiting = False  # close() runs from the atexit hook
        self._close_why = "close"  # what closes it: OPEN_CALL_ENDS' key
        self._lock = threading.RLock()  # a SIGTERM handler's close() may run inside close()
        # one sender process per shard of the slots (RingSpec.senders)
        self._senders: list[subprocess.Popen | None] = [None] * senders
        self._final_stats: dict[str, Any] | None = None
        self._unacked_mark = 0  # items spooled or dead-lettered when flush() last looked
        if self.config.start_sender:
            self._sender_args = self._write_sender_args()
            for shard in range(senders):
                self._start_sender(shard)
                threading.Thread(target=self._watch_sender, args=(shard,),
                                 name=f"engine-watchdog-{shard}", daemon=True).start()
            self._recover_orphans()
        # the URL the close's lines name, redacted once, now: its parser's first import at
        # exit (yarl, then platform, whose namedtuple is exec()'d) clears CPython's mark of an
        # uncaught Ctrl-C, and on Python 3.13 the program exited 1 instead of by SIGINT
        self._url_said = redact_url(self.config.url)
        atexit.register(self._atexit)
        _install_sigterm(self)

    # -- public API ---------------------------------------------------------------------------

    @property
    def spec(self) -> ring.RingSpec:
        return self._ringset.spec

    def producer(self) -> Tracer:
        """A tracer writing into this engine; picklable, so hand it to child processes."""
        if self._closed:
            raise Closed("engine is closed")
        return Tracer(self._ringset.spec, self._settings)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until everything enqueued before this call is settled; True only if the
        server acknowledged it all.

        False if ``timeout_s`` passed first, or if anything was spooled or dead-lettered
        (not delivered) since the previous ``flush()`` -- see ``stats()`` for where it went.
        Raises :class:`Closed` after :meth:`close`.
        """
        if self._closed:
            raise Closed("engine is closed")
        mark = self._unacked_mark
        released = wait_released(self._ringset, self._control, timeout_s, since=mark)
        self._unacked_mark = unacknowledged(self._control)
        return released and self._unacked_mark == mark

    def stats(self) -> dict[str, Any]:
        """Counters of the rings, the producers and the sender (see :func:`collect_stats`)."""
        if self._final_stats is not None:
            return self._final_stats
        return collect_stats(self._ringset, self._control)

    def close(self, timeout_s: float | None = None) -> dict[str, Any]:
        """Stop intake, deliver for up to ``shutdown_timeout_s``, then persist the rest.

        The sender delivers until the deadline, then spools or dead-letters whatever is not
        acknowledged, logs one line (delivered, persisted and where, dropped by reason) and
        exits. Returns the final stats; ``undelivered`` counts items still in shared memory
        (not even persisted: a full disk, a killed sender), which the ring set keeps for
        the next engine or ``engine replay`` to recover.

        A call of this process still open (``tracer.call``, ``@tracer.op``, the weave
        integration's; a thread's, or the one this close is called inside) is ended first,
        its exception saying that the engine closed (``OPEN_CALL_ENDS``): its own end
        would not be written. ``calls_ended_at_close`` counts them.
        """
        with self._lock:
            if self._closed or os.getpid() != self._owner_pid:
                return self.stats()
            self._closed = True
        timeout_s = self.config.shutdown_timeout_s if timeout_s is None else timeout_s
        deadline_s = time.monotonic() + timeout_s
        restarts = [0] * len(self._senders)
        self._restart_dead_senders(restarts)
        # this process's tracers: the ones it made, and copies; the ends a Ctrl-C or this
        # close stopped as they waited for room are written, the sender making room (a
        # second Ctrl-C meanwhile: persist what is left, now)
        ended: list[int] = []  # the calls left open that this close ended
        interrupted = close_tracers(  # (the ends not written: counted)
            self._ringset.spec, deadline_s,
            lambda: ended.append(_end_open_calls(self._ringset.spec, self._close_why)),
            _writes_cut)
        if interrupted:
            deadline_s = time.monotonic()
        if any(self._senders):
            try:
                self._stop_senders(deadline_s, restarts)
            except KeyboardInterrupt:  # Ctrl-C while it waits: persist what is left, now
                interrupted = True
                log.warning("engine: interrupted while delivering to %s; persisting what "
                            "is not delivered now", self._url_said)
                self._stop_senders(time.monotonic(), restarts)
        stats = collect_stats(self._ringset, self._control)
        stats["undelivered"] = _undelivered(self._ringset)
        stats["calls_ended_at_close"] = sum(ended)
        self._final_stats = stats
        self._free_rings(stats["undelivered"])
        self._control.close()
        # this process's mapping of the segment: a removed segment's memory (/dev/shm, or
        # the page cache of one on disk) is given back only once no process maps it
        self._ringset.close()
        if not self._exiting:  # nothing left for the exit to do: the engine can be freed
            atexit.unregister(self._atexit)
        if interrupted:
            raise KeyboardInterrupt
        return stats

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self._close_why = "ctrl-c"  # (the calls still open: another thread's)
        self.close()

    # -- the sender process -------------------------------------------------------------------

    def _write_sender_args(self) -> str:
        """What a sender needs, in the ring dir (0600): read by this engine's sender, and by
        whoever recovers the ring set if this engine dies with its sender. No API key.

        The files it persists to are written as this engine resolves them (the default
        dead-letter file from its $XDG_STATE_HOME or $HOME, a relative path from its working
        directory): a recovery runs in another process, whose environment and folder may
        differ, and must write where this engine would have, not into that process's own
        dead letters."""
        cfg = msgspec.structs.replace(
            self.config, api_key=None,
            dead_letter_path=os.path.abspath(self.config.dead_letter_path
                                             or default_dead_letter_path()),
            spool_dir=self._spool_dir and os.path.abspath(self._spool_dir))
        args = {"spec": msgspec.to_builtins(self._ringset.spec), "config": msgspec.to_builtins(cfg),
                "owner_pid": self._owner_pid, "ring_dir": self._ring_dir}
        return ring.write_sender_args(self._ringset.spec.shm_name, self._ring_dir,
                                      msgspec.json.encode(args))

    @property
    def _sender(self) -> subprocess.Popen | None:
        """The first sender process (the only one unless ``senders`` asks for more)."""
        return self._senders[0]

    def _start_sender(self, shard: int = 0) -> None:
        proc = ring.spawn_sender(self._sender_args, self.config.api_key, self._ring_dir,
                                 shard=shard, key_from=self._key_from)
        if proc is None:  # only a live sender holds our reader lock, and ours just ended
            raise EngineError(f"ring set {self._ringset.spec.shm_name} is already read by "
                              f"another process (sender {shard}); not starting a second one")
        self._senders[shard] = proc

    def _recover_orphans(self) -> None:
        """Start a sender on every ring set that an engine delivering to our URL left
        holding records when it died with its sender (see engine.ring._orphans)."""
        for orphan, proc in ring.recover(self.config.url, self.config.api_key,
                                          key_from=self._key_from):
            threading.Thread(target=proc.wait, name="engine-recovery", daemon=True).start()
            self._control.add("orphans_adopted")
            self._control.add("orphan_records", orphan.unreleased_records)

    def _watch_sender(self, shard: int) -> None:
        """Restart sender ``shard`` if it dies while the engine is open; it resumes from
        the release positions of its slots, and the server's idempotent upsert absorbs
        repeats. A sender that keeps dying soon after its start is restarted with growing
        pauses."""
        pause_s = 0.0  # the last pause: none yet
        while not self._closed:
            proc = self._senders[shard]
            if proc is None:
                return
            started = time.monotonic()
            code = proc.wait()
            if self._closed or os.getpid() != self._owner_pid:
                return
            lived_s = time.monotonic() - started
            # the first restart after _SENDER_RESTART_MIN_S (it was doubled before the first
            # sleep: 1 s), then twice the last pause while the sender dies within a minute
            pause_s = (_SENDER_RESTART_MIN_S if lived_s > 60 or not pause_s
                       else min(pause_s * 2, 30.0))
            # the pause first: a signal that ends the sender and then this owner (Ctrl-C, a
            # service manager's stop) is no restart, and says nothing about one
            time.sleep(pause_s)
            with self._lock:
                if self._closed or os.getpid() != self._owner_pid:
                    return
                self._control.add("sender_restarts")
                try:
                    self._start_sender(shard)
                except EngineError as exc:  # its reader is alive: nothing of ours to restart
                    log.error("sender process %d %s; %s", proc.pid, _describe_exit(code), exc)
                    return
            log.error("sender process %d %s after %.1f s; restarted it as %d, which resumes "
                      "from the last acknowledged positions", proc.pid, _describe_exit(code),
                      lived_s, self._senders[shard].pid)

    def _restart_dead_senders(self, restarts: list[int], killed_only: bool = False) -> None:
        """Start again each sender that died while the watchdog waited its pause to restart
        it (which it no longer does once closed), or, with ``killed_only``, that was killed
        or crashed while close() waited for it (one that settled exits 0): what its slots
        hold is then delivered or persisted by this close, not left in shared memory for
        the next engine. At most ``_CLOSE_RESTARTS`` times per sender and close
        (``restarts`` counts them)."""
        if not self.config.start_sender or os.getpid() != self._owner_pid:
            return
        for shard, proc in enumerate(self._senders):
            if (proc is None or proc.poll() is None or (killed_only and proc.returncode == 0)
                    or restarts[shard] >= _CLOSE_RESTARTS):
                continue
            restarts[shard] += 1
            self._control.add("sender_restarts")
            try:
                self._start_sender(shard)
            except EngineError as exc:  # its reader is alive: it is not ours to restart
                log.error("sender process %d %s; %s", proc.pid, _describe_exit(proc.returncode),
                          exc)
                continue
            log.error("sender process %d %s; started %d at close, to settle what it held",
                      proc.pid, _describe_exit(proc.returncode), self._senders[shard].pid)

    def _stop_senders(self, deadline_s: float, restarts: list[int]) -> None:
        """Ask the senders to deliver until ``deadline_s``, persist the rest and exit; wait
        until they settled what was enqueued. One killed meanwhile is started again (see
        ``_restart_dead_senders``). A sender that lingers for producers still attached is
        left to finish on its own; one still busy well past the deadline is stuck and
        killed (what it held stays in the ring set for recovery)."""
        heads, _ = self._ringset.positions()
        self._control.set("shutdown_request", max(1, int(deadline_s * 1e9)))
        ring_doorbell(self._ringset)
        give_up_s = deadline_s + _STUCK_GRACE_S

        def all_gone() -> int | None:
            if time.monotonic() < deadline_s:
                self._restart_dead_senders(restarts, killed_only=True)
            return None if any(p is not None and p.poll() is None for p in self._senders) else 0

        settled = wait_heads_released(self._ringset, heads,
                                      min(give_up_s, time.monotonic() + _SAY_WAITING_S),
                                      all_gone)
        if not settled and time.monotonic() < deadline_s and all_gone() is None:
            log.warning("engine: delivering what the rings hold to %s for up to %.0f s more "
                        "(%s records of calls not acknowledged yet); Ctrl-C stops waiting: they go to "
                        "%s", self._url_said, deadline_s - time.monotonic(),
                        f"{_undelivered(self._ringset):,}", persisted_to(self.config))
            settled = wait_heads_released(self._ringset, heads, give_up_s, all_gone)
        for proc in [p for p in self._senders if p is not None]:
            try:
                wait_exit(proc, min(_EXIT_GRACE_S, max(0.0, give_up_s - time.monotonic()))
                          if settled else max(0.0, give_up_s - time.monotonic()))
            except subprocess.TimeoutExpired:
                if settled:
                    continue  # producers still attached: it serves them until the deadline
                log.error("sender %d did not settle within %.1f s of its deadline; killing it",
                          proc.pid, _STUCK_GRACE_S)
                proc.kill()
                proc.wait()

    def _free_rings(self, undelivered: int) -> None:
        """Remove the ring set once nothing in it needs a reader: never while it holds
        records (they wait for recovery), a sender still runs, or producers are attached."""
        if self.config.start_sender:
            if any(p is not None and p.poll() is None for p in self._senders):
                return  # still serving attached producers: the last removes the ring set
            if undelivered or ring.holds_records(self._ringset):
                ring.mark_closed(self._ring_dir)  # recoverable while this process lives on
                if all(p is not None and p.returncode == 0 for p in self._senders):
                    return  # their exit lines said so
                log.error("%d items are still in shared memory (ring set %s): the next Engine "
                          "delivering to %s, or `engine replay --to %s`, recovers them",
                          undelivered, self._ringset.spec.shm_name,
                          self._url_said, self._url_said)
                return
            if ring.attached_producers(self._ringset):
                return  # they may still write: removed once they exit and it holds nothing
        self._ringset.unlink()

    def _atexit(self) -> None:
        self._exiting = True  # close() leaves the registration be: it is being run
        if self._close_why == "close":  # (a program's KeyboardInterrupt uncaught: printed,
            # and kept as sys.last_value, before the exit's hooks run)
            self._close_why = ("ctrl-c" if isinstance(getattr(sys, "last_value", None),
                                                      KeyboardInterrupt) else "exit")
        if os.getpid() == self._owner_pid:
            # the program is ending anyway: a Ctrl-C in close() persisted what was left, and
            # the exit line says where (no "Exception ignored in atexit" traceback)
            with contextlib.suppress(KeyboardInterrupt):
                self.close()


def _spool_dir(config: EngineConfig) -> str | None:
    """The spool this engine's sender persists to, checked now rather than on first use. A
    ``spool_dir`` the user named that cannot be made or written is a ConfigError; the default
    (``"auto"``: under this user's state directory) that cannot is said once, and what is not
    delivered goes to the dead letters, as with no spool."""
    spool = spool_path(config)
    if spool is None or not config.start_sender:
        return spool
    # the default's own folder is made by the first segment (none for a server never down)
    problem = dir_problem(os.path.dirname(spool) if config.spool_dir == "auto" else spool)
    if problem is None:
        return spool
    if config.spool_dir != "auto":
        raise ConfigError("spool_dir", problem)
    log.warning("no spool (%s): what is not delivered goes to the dead letters; set "
                "spool_dir to a folder this user can write, or \"off\"", problem)
    return None


def _create_rings(config: EngineConfig, senders: int) -> ring.RingSet:
    try:
        return ring.RingSet.create(2 * config.ring_bytes, config.max_slots, senders)
    except OSError as exc:  # a segment larger than the file system or the address space takes
        raise ConfigError("ring_bytes", f"{config.max_slots:,} rings (max_slots) of twice "
                          f"{config.ring_bytes:,} bytes cannot be made here ({exc.strerror}): "
                          "lower ring_bytes or max_slots") from None


def _describe_exit(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    if code > 128 and code - 128 in signal.valid_signals():
        return f"stopped on {signal.Signals(code - 128).name} after settling what it held"
    return f"exited with {code}"


def _undelivered(ringset: ring.RingSet) -> int:
    """Records written but never released (neither acknowledged, spooled nor dead-lettered)."""
    counters = ringset.counters()
    return counters["records_written"] - counters["records_released"]


def collect_stats(ringset: ring.RingSet, control: Control) -> dict[str, Any]:
    """Ring counters (``ring``, with only the slots ever used), producer counters
    (``producers``, summed), and the sender's counters and gauges at the top level."""
    rings = ringset.counters()
    rings["slots"] = [s for s in rings.get("slots", []) if s.get("times_claimed")]
    stats: dict[str, Any] = {"ring": rings}
    stats.update(control.sender_snapshot())
    stats["producers"] = control.producer_totals()
    stats["native_accelerator"] = _accel.native is not None  # in the process that asks
    return stats


# The end an engine's close writes for a call of this process still open then (a thread
# still in it, the call a SIGTERM interrupted), by what closes the engine: (its
# ``exception``, what the close's warning line names). Without it the call showed as
# running on the server for good.
OPEN_CALL_ENDS = {
    "close": ("Unfinished: the engine was closed while this call ran; the call's own end, "
              "if it comes, is not traced", "close()"),
    "exit": ("Unfinished: the program exited while this call ran (in a thread or task still "
             "running); the engine ended it as it closed", "the program's exit"),
    "ctrl-c": ("Interrupted: the program was stopped by Ctrl-C (KeyboardInterrupt) while "
               "this call ran (in a thread or task still running); the engine ended it as "
               "it closed", "the program's exit on Ctrl-C"),
    "sigterm": ("Terminated: the process got SIGTERM while this call ran; the engine ended "
                "it as it closed", "SIGTERM"),
}
# who ends open calls at a close: the call handles' (tracer.call, @tracer.op), and the
# weave integration's (weave's calls): (ender, cut), ender(spec, exception) -> how many it
# ended; cut() -> a function saying how many of the starts and ends begun so far other
# threads are still writing (their calls not yet in, or just taken out of, the open calls)
_open_call_enders: list[tuple[Callable[[ring.RingSpec, str], int],
                              Callable[[], Callable[[], int]]]] = [(end_open_calls, writes_cut)]


def end_open_calls_with(ender: Callable[[ring.RingSpec, str], int],
                        cut: Callable[[], Callable[[], int]]) -> None:
    """Have ``ender`` end the calls it knows open when an engine of this process closes;
    ``cut``: as ``engine.producer._handle.writes_cut`` for its calls (the close waits for
    the writes it reports first)."""
    if (ender, cut) not in _open_call_enders:
        _open_call_enders.append((ender, cut))


def _writes_cut() -> Callable[[], int]:
    lefts = [cut() for _, cut in list(_open_call_enders)]
    return lambda: sum(left() for left in lefts)


def _end_open_calls(spec: ring.RingSpec, why: str) -> int:
    """Every ender's open calls writing into ``spec``, ended with ``why``'s text; said."""
    exception, said = OPEN_CALL_ENDS[why]
    ended = 0
    for ender, _ in list(_open_call_enders):
        try:
            ended += ender(spec, exception)
        except Exception:  # noqa: BLE001 - the close goes on: those calls stay open
            log.exception("engine: could not end the calls still open as it closed")
    if ended:
        log.warning("engine: %d call%s still open as it closed (%s): ended, the end saying "
                    "so", ended, "s were" if ended != 1 else " was", said)
    return ended


_open_engines: weakref.WeakSet[Engine] = weakref.WeakSet()
_sigterm_installed = False
# run by the SIGTERM handler before the engines close: work that still has calls to hand
# over (the weave integration: weave's executor threads); each bounded, none may raise
_before_sigterm_close: list[Callable[[], None]] = []


def before_sigterm_close(hook: Callable[[], None]) -> None:
    """Run ``hook`` in the SIGTERM handler, before the open engines flush and close."""
    if hook not in _before_sigterm_close:
        _before_sigterm_close.append(hook)


# deferrer(frame, run) -> True where it will run the handler's work later: the interrupted
# code (``frame``) may hold locks the hooks would wait on (the weave integration: inside
# weave's hand-off to its thread pool); the work then runs at the first line outside it
_sigterm_deferrers: list[Callable[[Any, Callable[[], None]], bool]] = []


def defer_sigterm_with(deferrer: Callable[[Any, Callable[[], None]], bool]) -> None:
    if deferrer not in _sigterm_deferrers:
        _sigterm_deferrers.append(deferrer)


def _install_sigterm(engine: Engine) -> None:
    """SIGTERM in the owner flushes every open engine like a normal exit, then terminates
    as SIGTERM would. Installed once, from the main thread, only if nobody else handles
    SIGTERM. A forked child gets SIGTERM's default back (``_sigterm_after_fork``)."""
    global _sigterm_installed
    _open_engines.add(engine)
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return
    signal.signal(signal.SIGTERM, _on_sigterm)
    _sigterm_installed = True


def _on_sigterm(signum: int, frame: Any) -> None:
    for deferrer in list(_sigterm_deferrers):
        try:
            if deferrer(frame, _settle_on_sigterm):
                return
        except Exception:  # noqa: BLE001 - not deferred: settle now
            log.exception("engine: a SIGTERM deferrer failed; closing the engines now")
            break
    _settle_on_sigterm()


# the weave integration's guard around the program's handlers leaves this one be: it
# defers through ``_sigterm_deferrers`` itself
_on_sigterm.defers_itself = True  # type: ignore[attr-defined]
_sigterm_deadline_s: float | None = None  # monotonic; set while SIGTERM is being settled


def sigterm_time_left(default_s: float) -> float:
    """For a SIGTERM hook: the seconds left of the owner's ``sigterm_timeout_s`` (``default_s``
    outside a SIGTERM)."""
    if _sigterm_deadline_s is None:
        return default_s
    return max(0.0, _sigterm_deadline_s - time.monotonic())


def _settle_on_sigterm() -> None:
    """The hooks, then every open engine delivers and closes, within the engines'
    ``sigterm_timeout_s`` in all (what follows SIGTERM is SIGKILL after a grace period:
    ``docker stop`` gives 10 s, Kubernetes and Slurm 30): each delivers for
    ``shutdown_timeout_s`` or what is left of it, whichever is less, then persists the
    rest. Then SIGTERM's default."""
    global _sigterm_deadline_s
    owned = [e for e in list(_open_engines) if os.getpid() == e._owner_pid]
    budget_s = max((e.config.sigterm_timeout_s for e in owned),
                   default=SIGTERM_TIMEOUT_S)
    _sigterm_deadline_s = time.monotonic() + budget_s
    for hook in list(_before_sigterm_close):
        try:
            hook()
        except Exception:  # noqa: BLE001 - the engines still close, and SIGTERM still ends us
            log.exception("engine: a SIGTERM hook failed; closing the engines")
    for open_engine in owned:
        open_engine._close_why = "sigterm"
        open_engine.close(min(open_engine.config.shutdown_timeout_s, sigterm_time_left(0.0)))
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


_fork_masks = threading.local()  # the forking thread's signal mask, while it forks


def _sigterm_before_fork() -> None:
    """Hold SIGTERM back in the forking thread (the child starts with that mask): a SIGTERM
    sent to a child right after fork -- Pool.terminate() racing a worker being replaced --
    would otherwise reach our Python handler's C half and be dropped when the child resets
    its signals, leaving a worker that ignores the terminate and a join() that never ends."""
    if _sigterm_installed and signal.getsignal(signal.SIGTERM) is _on_sigterm:
        _fork_masks.old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


def _restore_fork_mask() -> None:
    """After fork, in parent and child: the forking thread's mask as it was before."""
    old = getattr(_fork_masks, "old", None)
    if old is not None:
        _fork_masks.old = None
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _sigterm_after_fork() -> None:
    """A forked child owns none of the engines it inherited, so the handler would only
    re-raise; and a Python handler runs only when the child's main thread gets back to the
    interpreter, so a worker busy in C would outlive ``Pool.terminate()``. The default
    disposition kills it at once, as without us; a SIGTERM held back during the fork is
    delivered right here, with that default."""
    global _sigterm_installed
    if _sigterm_installed and signal.getsignal(signal.SIGTERM) is _on_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _sigterm_installed = False  # an Engine made in the child installs it for itself
    _restore_fork_mask()


os.register_at_fork(before=_sigterm_before_fork, after_in_parent=_restore_fork_mask,
                    after_in_child=_sigterm_after_fork)

