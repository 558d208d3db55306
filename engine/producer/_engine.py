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
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from typing import Any

import msgspec

from engine import ring
from engine.common._config import EngineConfig, load_config
from engine.common._control import Control, control_path
from engine.common._errors import Closed, ConfigError
from engine.native import _accel
from engine.producer._flush import ring_doorbell, wait_released
from engine.producer._slot import ProducerSettings, close_tracers
from engine.producer._tracer import Tracer

__all__ = ["Engine"]

log = logging.getLogger("engine")

_SENDER_RESTART_MIN_S = 0.5


class Engine:
    """Owns the ring set and the sender process; a context manager.

    Arguments override ``ENGINE_*`` environment variables, which override the TOML file
    (``config_file`` or ``$ENGINE_CONFIG``), which overrides the defaults; see
    ``config/engine.toml`` for every setting.
    """

    def __init__(self, url: str | None = None, project: str | None = None, *,
                 config_file: str | None = None, **config: Any) -> None:
        self.config: EngineConfig = load_config(config_file, url=url, project=project, **config)
        if not self.config.project:
            raise ConfigError("project", 'required, e.g. Engine(project="entity/project")')
        self._ringset = ring.RingSet.create(self.config.ring_bytes, self.config.max_slots)
        self._ring_dir = os.path.dirname(self._ringset.spec.lock_path)
        self._control = Control(control_path(self._ring_dir), self.config.max_slots, create=True)
        self._settings = ProducerSettings(
            project=self.config.project, max_block_ms=self.config.max_block_ms,
            on_full=self.config.on_full, strict=self.config.strict,
            max_request_bytes=self.config.max_request_bytes,
        )
        self._owner_pid = os.getpid()
        self._closed = False
        self._lock = threading.Lock()
        self._sender: subprocess.Popen | None = None
        self._final_stats: dict[str, Any] | None = None
        if self.config.start_sender:
            self._start_sender()
            self._watchdog = threading.Thread(target=self._watch_sender, name="engine-watchdog",
                                              daemon=True)
            self._watchdog.start()
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
        """True once the server acknowledged (or dead-lettered/spooled) everything enqueued
        before this call; False if ``timeout_s`` passed first."""
        return wait_released(self._ringset, self._control, timeout_s)

    def stats(self) -> dict[str, Any]:
        """Counters of the rings, the producers and the sender (see :func:`collect_stats`)."""
        if self._final_stats is not None:
            return self._final_stats
        return collect_stats(self._ringset, self._control)

    def close(self, timeout_s: float | None = None) -> dict[str, Any]:
        """Stop intake, deliver within ``shutdown_timeout_s``, stop the sender, free memory.

        Returns the final stats; ``undelivered`` counts items still not acknowledged (they
        were spooled or dead-lettered by the sender where configured, and are logged).
        """
        with self._lock:
            if self._closed or os.getpid() != self._owner_pid:
                return self.stats()
            self._closed = True
        timeout_s = self.config.shutdown_timeout_s if timeout_s is None else timeout_s
        close_tracers(self._ringset.spec)  # this process's: the ones it made, and copies
        delivered = True
        if self._sender is not None:
            delivered = self.flush(timeout_s)
            self._stop_sender(deadline_s=max(2.0, timeout_s * 0.2))
        stats = collect_stats(self._ringset, self._control)
        stats["undelivered"] = _undelivered(self._ringset)
        if not delivered:
            log.error("engine closed before %s acknowledged everything: %d items went to the "
                      "dead-letter file, %d to the spool, %d were lost with the sender",
                      self.config.url, stats["dead_shutdown"], stats["spooled_items"],
                      stats["undelivered"])
        self._final_stats = stats
        self._control.close()
        self._ringset.unlink()
        return stats

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the sender process -------------------------------------------------------------------

    def _sender_command(self) -> list[str]:
        cfg = msgspec.structs.replace(self.config, api_key=None)
        args = {"spec": msgspec.to_builtins(self._ringset.spec), "config": msgspec.to_builtins(cfg),
                "owner_pid": self._owner_pid, "ring_dir": self._ring_dir}
        return [sys.executable, "-m", "engine.sender", msgspec.json.encode(args).decode()]

    def _start_sender(self) -> None:
        env = dict(os.environ)
        env.pop("ENGINE_API_KEY", None)
        if self.config.api_key:
            env["ENGINE_SENDER_API_KEY"] = self.config.api_key
        # stdout stays free for the user's program (a pipe must close when the owner exits);
        # stderr carries the sender's log lines. A session of its own: a signal to the
        # owner's process group (Ray's raylet kills a dead worker's group) must not reach it,
        # so it can drain what the rings hold once its owner is gone.
        self._sender = subprocess.Popen(self._sender_command(), env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, close_fds=True,
                                        start_new_session=True)

    def _watch_sender(self) -> None:
        """Restart the sender if it dies while the engine is open; it resumes from the
        release positions, and the server's idempotent upsert absorbs repeats. A sender
        that keeps dying soon after its start is restarted with growing pauses."""
        pause_s = _SENDER_RESTART_MIN_S
        while not self._closed:
            proc = self._sender
            if proc is None:
                return
            started = time.monotonic()
            code = proc.wait()
            if self._closed or os.getpid() != self._owner_pid:
                return
            lived_s = time.monotonic() - started
            pause_s = _SENDER_RESTART_MIN_S if lived_s > 60 else min(pause_s * 2, 30.0)
            log.error("sender process exited with %s after %.1f s; restarting it in %.1f s",
                      code, lived_s, pause_s)
            time.sleep(pause_s)
            with self._lock:
                if not self._closed:
                    self._control.add("sender_restarts")
                    self._start_sender()

    def _stop_sender(self, deadline_s: float) -> None:
        proc = self._sender
        if proc is None:
            return
        self._control.set("shutdown_request", 1)
        ring_doorbell(self._ringset)
        try:
            proc.wait(deadline_s)
        except subprocess.TimeoutExpired:
            log.error("sender did not stop within %.1f s; terminating it", deadline_s)
            proc.kill()
            proc.wait()

    def _atexit(self) -> None:
        if os.getpid() == self._owner_pid:
            self.close()


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


_open_engines: weakref.WeakSet[Engine] = weakref.WeakSet()
_sigterm_installed = False


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
    for open_engine in list(_open_engines):
        if os.getpid() == open_engine._owner_pid:
            open_engine.close()
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
