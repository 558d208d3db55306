"""A check run after every test: ring sets that the test's processes left behind fail it.

An engine SIGKILLed with its sender leaves its ring set (``engine.ring._orphans``), and the
next Engine or ``engine replay`` for the same URL recovers it: when a later test's loopback
server is given the same port, that test receives the calls of the test that left it (or
its dead letters get them). So, after each test (its teardown, module fixtures included),
:class:`RingLeakCheck` lists the ring sets that appeared during it, keeps those that are
*this* test's, waits up to :data:`READ_WAIT_S` for those a sender is still draining (it holds
``<ring dir>/reader.lock``; or, for a segment whose folder is gone, a live process maps it),
and fails the test with what each holds (its URL, records not released, dead-letter file),
having removed them (and killed a sender still reading one after the wait), holding their
reader locks meanwhile so that no other engine's scan starts recovering them. It costs two
listings of /dev/shm and the temp dir per test (~0.1 ms each).

Which ring sets are this test's, with another xdist worker (or another pytest run) creating
and leaving its own at the same moment: those made by this process, and those whose
settings (the copy beside the segment, or ``sender.json`` in its private directory) name a
private directory, dead-letter file or spool under this session's own folders -- pytest's
base temp dir, whose ``tmp_path``\\s are per worker, and the per-worker ``XDG_STATE_HOME``
that holds the default dead-letter file. Tests in one worker run one after another, so a
ring set of the worker that appeared during a test is that test's. A ring set made by a
child process without a sender (``start_sender=False``, ``RingSet.create``) names no path
and is not judged: it holds no URL, so no engine recovers it (the next scan removes it).

Judged are the ring sets their engine is done with: its owner is gone, or closed it (its
``close()`` asked the senders to stop; a module fixture's engine, still open, is not left
behind yet). One its owner closed that holds nothing is removed without failing the test:
a sender leaves it so for producers still attached at its end (pooled workers, Ray's, keep
their slot), for the next scan to remove once they exit -- removed now, so that what such a
producer might still write cannot be recovered into a later test's server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest

from engine.common._control import Control, control_path
from engine.ring import _files as ring_files
from engine.ring import _orphans
from engine.ring._layout import RingSpec

READ_WAIT_S = 5.0  # a sender draining a killed engine's rings gets this long to finish
_KILL_WAIT_S = 5.0
_POLL_S = 0.05
_BEFORE = pytest.StashKey[frozenset]()


def ring_names() -> frozenset[str]:
    """Names of the ring sets with an entry in /dev/shm (segment, settings copy) or in this
    temp dir (private directory): one listing of each."""
    names = set()
    for where in {ring_files.SEGMENT_DIR, tempfile.gettempdir()}:
        try:
            entries = os.listdir(where)
        except OSError:
            continue
        for entry in entries:
            if entry.startswith(ring_files.NAME_PREFIX):
                for suffix in (ring_files.SEGMENT_SUFFIX, ring_files.SIDECAR_SUFFIX):
                    entry = entry.removesuffix(suffix)
                if ring_files._owner_of(entry) is not None:
                    names.add(entry)
    return frozenset(names)


@dataclass
class LeftRingSet:
    """A ring set as found after a test: where its files are and what its engine said."""

    name: str
    ring_dir: str
    settings: dict[str, Any] | None  # its sender's settings (None: no sender was set up)

    @classmethod
    def find(cls, name: str) -> LeftRingSet:
        """Its settings from the copy beside the segment, else from its folder here; its
        folder: the one they name, else the one here (made again by a scan, if that one is
        gone)."""
        here = os.path.join(tempfile.gettempdir(), name)
        found = [_read_settings(ring_files.sidecar_path(name)),
                 _read_settings(os.path.join(here, _orphans.SENDER_ARGS))]
        settings = next((s for s in found if s is not None), None)
        named = settings.get("ring_dir") if settings else None
        if not isinstance(named, str) or (not os.path.isdir(named) and os.path.isdir(here)):
            named = here
        return cls(name, named, settings)

    @property
    def owner(self) -> tuple[int, int]:
        owner = ring_files._owner_of(self.name)
        assert owner is not None, self.name
        return owner

    @property
    def config(self) -> dict[str, Any]:
        config = (self.settings or {}).get("config")
        return config if isinstance(config, dict) else {}

    def paths(self) -> list[str]:
        """The folders and files it names: its private directory, dead letters, spool."""
        named = [self.config.get("dead_letter_path"), self.config.get("spool_dir")]
        return [self.ring_dir, *(p for p in named if isinstance(p, str) and p)]

    def belongs_to(self, pid: int, roots: Iterable[str]) -> bool:
        """Made by process ``pid``, or naming a path under one of ``roots``."""
        if self.owner[0] == pid:
            return True
        real_roots = [os.path.realpath(root) for root in roots]
        return any(_under(os.path.realpath(path), root)
                   for path in self.paths() for root in real_roots)

    def done_with(self) -> bool:
        """Its engine is done with it: the owner is gone, or closed it (its senders may
        still be delivering)."""
        return not ring_files.is_alive(*self.owner) or self.closed_by_owner()

    def closed_by_owner(self) -> bool:
        """The owner's close() asked its senders to stop, or they stopped keeping it (the
        mark a sender leaves for producers still attached, or the owner for records)."""
        if os.path.exists(os.path.join(self.ring_dir, _orphans.CLOSED_MARK)):
            return True
        with contextlib.suppress(OSError, ValueError):
            control = Control(control_path(self.ring_dir))
            try:
                return control.get("shutdown_request") != 0
            finally:
                control.close()
        return False

    def closed_empty(self) -> bool:
        """Closed by its owner and holding nothing: what a sender leaves for producers still
        attached at its end (pooled workers, Ray's, keep their slot), for the next scan to
        remove once they exit (``engine.ring._orphans.find_orphans``)."""
        spec = self._spec()
        return (spec is not None and self.closed_by_owner()
                and _orphans.unreleased_records(spec) == 0)

    def without_segment(self) -> bool:
        """Its segment is gone (only its folder or settings are left): it holds nothing and
        nothing can be written into it, so no engine can recover anything from it (a Ray
        worker killed at the cluster's end leaves such a folder; the next scan removes it)."""
        return not os.path.exists(ring_files.segment_path(self.name, self.ring_dir))

    def exists(self) -> bool:
        return any(os.path.exists(path) for path in (
            ring_files.segment_path(self.name, self.ring_dir),
            ring_files.sidecar_path(self.name), self.ring_dir))

    def senders(self) -> int:
        spec = (self.settings or {}).get("spec")
        return int(spec.get("senders", 1)) if isinstance(spec, dict) else 1

    def take_reader_locks(self) -> list[int] | None:
        """Every sender's reader lock ([] when it has no private dir left to hold one);
        None while a sender holds one."""
        if not os.path.isdir(self.ring_dir):
            return []
        try:
            return _orphans.take_reader_locks(self.ring_dir, self.senders())
        except FileNotFoundError:  # its sender removed it meanwhile
            return []

    def records(self) -> int | None:
        spec = self._spec()
        return None if spec is None else _orphans.unreleased_records(spec)

    def _spec(self) -> RingSpec | None:
        spec = (self.settings or {}).get("spec")
        if isinstance(spec, dict):
            with contextlib.suppress(TypeError):
                return RingSpec(**{**spec, **ring_files.dir_paths(self.ring_dir)})
        return _orphans.spec_of(self.name)

    def mapped_by(self) -> list[int]:
        """Live processes (this one apart) that map its segment."""
        segment = ring_files.segment_path(self.name, self.ring_dir)
        return _processes_mapping(segment) if os.path.exists(segment) else []

    def describe(self, killed: list[int], mapping: list[int], wait_s: float) -> str:
        pid = self.owner[0]
        owner = (f"owner {pid} closed it" if ring_files.is_alive(*self.owner)
                 else f"owner {pid} is gone")
        records = self.records()
        held = "no segment" if records is None else f"records not released: {records:,}"
        url = self.config.get("url")
        where = (f"for {url} (dead letters: {self.config.get('dead_letter_path')})"
                 if url else "no sender settings")
        read = (f"; its sender{'s' if len(killed) > 1 else ''} "
                f"{', '.join(map(str, killed))} still read it {wait_s:g} s after the test: "
                "killed" if killed else "")
        mapped = (f"; still mapped by live processes {', '.join(map(str, mapping))} "
                  f"{wait_s:g} s after the test" if mapping else "")
        return f"{self.name} ({self.ring_dir}): {held}, {where}; {owner}{read}{mapped}"

    def remove(self) -> None:
        ring_files.remove_ring_files(self.name, self.ring_dir)
        # a folder a scan made here for it (its name is this ring set's alone)
        shutil.rmtree(os.path.join(tempfile.gettempdir(), self.name), ignore_errors=True)


def _read_settings(path: str) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, msgspec.DecodeError):
        with open(path, "rb") as file:
            decoded = msgspec.json.decode(file.read())
        return decoded if isinstance(decoded, dict) else None
    return None


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def left_behind(before: frozenset[str], roots: Iterable[str],
                pid: int | None = None) -> list[LeftRingSet]:
    """The ring sets that appeared since ``before``, that their engine is done with, and that
    belong to process ``pid`` (default: this one) or name a path under ``roots``."""
    pid = os.getpid() if pid is None else pid
    roots = list(roots)
    found = [LeftRingSet.find(name) for name in sorted(ring_names() - before)]
    return [left for left in found if left.belongs_to(pid, roots) and left.done_with()]


def settle(left: list[LeftRingSet], wait_s: float = READ_WAIT_S) -> list[str]:
    """Judge each ring set once no sender reads it (waiting up to ``wait_s``; a sender
    still reading after that is killed): describe and remove those still there, holding
    their reader locks meanwhile so that no engine's scan starts recovering them. Returns
    the descriptions (empty: nothing was left behind)."""
    said: list[str] = []
    pending = list(left)
    deadline = time.monotonic() + wait_s
    while pending:
        still_read = []
        for ring_set in pending:
            if not ring_set.exists():
                continue  # its sender finished and removed it
            locks = ring_set.take_reader_locks()
            if locks is None or (locks == [] and ring_set.mapped_by()):
                still_read.append(ring_set)  # [] and mapped: recovered from a folder elsewhere
            elif ring_set.closed_empty() or ring_set.without_segment():
                # the product's own states, nothing in them to recover: removed, not said
                _judge(ring_set, locks, [], [], wait_s)
            else:
                said.append(_judge(ring_set, locks, [], [], wait_s))
        pending = still_read
        if pending and time.monotonic() >= deadline:
            said += [_kill_readers_and_judge(ring_set, wait_s) for ring_set in pending]
            break
        if pending:
            time.sleep(_POLL_S)
    return said


def _judge(ring_set: LeftRingSet, locks: list[int], killed: list[int], mapping: list[int],
           wait_s: float) -> str:
    try:
        said = ring_set.describe(killed, mapping, wait_s)
        ring_set.remove()
    finally:
        _release(locks)
    return said


def _release(locks: list[int]) -> None:
    for fd in locks:
        os.close(fd)


def _kill_readers_and_judge(ring_set: LeftRingSet, wait_s: float) -> str:
    """Its senders are killed; processes that only map its segment (a producer, a sender
    whose folder is elsewhere) are named."""
    readers = _processes_holding(ring_set.ring_dir, _orphans.READER_LOCK)
    for pid in readers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + _KILL_WAIT_S
    while (locks := ring_set.take_reader_locks()) is None:
        if time.monotonic() >= deadline:
            ring_set.remove()
            return (f"{ring_set.name}: still read by a process that did not die "
                    f"{_KILL_WAIT_S:.0f} s after SIGKILL (pids {readers}); files removed")
        time.sleep(_POLL_S)
    return _judge(ring_set, locks, readers, ring_set.mapped_by(), wait_s)


def _processes_holding(directory: str, prefix: str) -> list[int]:
    """Pids of processes with an open fd on a file ``directory/prefix*``."""
    needle = os.path.join(directory, prefix)
    pids = []
    for proc in os.listdir("/proc"):
        if not proc.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{proc}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{proc}/fd/{fd}").startswith(needle):
                        pids.append(int(proc))
                        break
    return pids


def _processes_mapping(path: str) -> list[int]:
    """Pids of live processes (this one apart) that map the file ``path``."""
    needle = path.encode()
    pids = []
    for proc in os.listdir("/proc"):
        if not proc.isdigit() or int(proc) == os.getpid():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{proc}/maps", "rb") as maps:
            if needle in maps.read() and ring_files.process_start_ticks(int(proc)) is not None:
                pids.append(int(proc))
    return pids


class RingLeakCheck:
    """The pytest plugin: ``config.pluginmanager.register(RingLeakCheck(config, roots))``.
    ``roots``: this session's folders besides pytest's base temp dir (its state home);
    ``wait_s``: how long a ring set a sender still reads may take to be removed."""

    def __init__(self, config: pytest.Config, roots: Callable[[], Iterable[str]] = list,
                 wait_s: float = READ_WAIT_S) -> None:
        self._config = config
        self._roots = roots
        self._wait_s = wait_s

    def roots(self) -> list[str]:
        # tmp_path's root: one per session, and one per worker under pytest-xdist
        return [str(self._config._tmp_path_factory.getbasetemp()), *self._roots()]

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        item.stash[_BEFORE] = ring_names()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        report = yield
        if call.when == "teardown" and _BEFORE in item.stash:
            said = settle(left_behind(item.stash[_BEFORE], self.roots()), self._wait_s)
            if said:
                _fail(report, said)
        return report


def _fail(report: pytest.TestReport, said: list[str]) -> None:
    text = ("ring sets left behind by this test (its processes killed with their senders?), "
            "now removed: the next Engine or `engine replay` for the same URL would have "
            "recovered them, into whichever test's server has that port then. Recover "
            "them in the test (another Engine for the URL, `engine replay --to URL`) or "
            "remove them.\n" + "\n".join(f"  {line}" for line in said))
    if report.failed:
        report.sections.append(("ring sets left behind", text))
    else:
        report.outcome = "failed"
        report.longrepr = text
