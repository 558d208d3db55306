"""Ring sets left behind by engines that died with their sender (SIGKILL of the whole
process group, the OOM killer): found, recovered or removed -- never deleted unread.

A ring set is an *orphan* when its owner process is gone (or closed it, keeping it only for
the records it could not persist: ``mark_closed``) and no sender reads it: every
sender holds ``flock`` on ``<ring dir>/reader.lock`` for its whole life (an owner's sender,
a sender draining after its owner died, a recovery), and the kernel lets go of that lock
when the process dies, however it dies. An orphan whose every record was released holds
nothing: it is removed. One that still holds records is recovered by a sender started on
it (``python -m engine.sender <ring dir>/sender.json``: the settings its engine had; it
finds its owner gone, drains for up to ``shutdown_timeout_s``, spools or dead-letters the
rest, and removes the ring set). Whoever asks -- a new :class:`engine.Engine`, ``engine
replay`` -- recovers only the orphans of engines that delivered to the same URL.

A segment in ``/dev/shm`` whose private directory is gone (a job scheduler's per-job
``TMPDIR`` removed at the job's end, a tmp cleaner) is *bare*. Its reader lock went with the
folder, so a live process that maps the segment (a producer, a sender, a recovery from
another ``TMPDIR``) or holds a file of the folder open (a sender's reader lock, still held
though unlinked) is what says it is in use: such a one is neither an orphan nor removed.
One that holds nothing is removed. One that holds records, that no live process maps and
whose engine left its settings beside it (``<name>.json``) gets a new private directory in
this temp dir, built aside and renamed into place, and is then recovered like any orphan --
by a scan for the URL its engine delivered to only: a scan for another (an engine or replay
for another server, a ``RingSet.create``) lists it and leaves it where it is, so the folder
is made once, by whoever recovers it. One whose directory is in another ``TMPDIR`` is left
to the engines of that ``TMPDIR``.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from engine.common._control import Control, control_path
from engine.ring import _files
from engine.ring._layout import (
    ACTIVE,
    G_MAGIC,
    G_RING_BYTES,
    GLOBAL_WORDS,
    MAGIC,
    S_HEAD,
    S_PID,
    S_RECORDS_RELEASED,
    S_RECORDS_WRITTEN,
    S_RELEASED,
    S_START_TICKS,
    S_STATE,
    SLOT_WORDS,
    U64,
    VERSION,
    RingSpec,
    data_offset,
)

if TYPE_CHECKING:
    from engine.ring._set import RingSet

log = logging.getLogger("engine.ring")

READER_LOCK = "reader.lock"
SENDER_ARGS = "sender.json"
CLOSED_MARK = "closed"
_HEADER = struct.Struct("=4Q")  # magic, version, ring_bytes, max_slots (native u64 words)


@dataclass(frozen=True)
class Orphan:
    """A ring set whose owner and sender are gone, with the records it still holds."""

    name: str
    ring_dir: str
    url: str | None  # where its engine delivered (None: no sender.json)
    unreleased_records: int
    bare: bool = False  # its folder is gone and this scan was for another URL: listed only

    @property
    def sender_args(self) -> str:
        return os.path.join(self.ring_dir, SENDER_ARGS)


def reader_lock_path(ring_dir: str, shard: int = 0) -> str:
    """The reader lock of sender ``shard`` (a ring set read by several has one each)."""
    return os.path.join(ring_dir, READER_LOCK if shard == 0 else f"{READER_LOCK}.{shard}")


def take_reader_lock(ring_dir: str, shard: int = 0) -> int | None:
    """The reader lock of sender ``shard`` of a ring set as an open fd (held until it is
    closed), or None if another process holds it."""
    fd = os.open(reader_lock_path(ring_dir, shard),
                 os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def take_reader_locks(ring_dir: str, shards: int) -> list[int] | None:
    """Every sender's reader lock (a recovery reads every slot), or None (and none held)
    if any is held by another process."""
    fds: list[int] = []
    for shard in range(shards):
        fd = take_reader_lock(ring_dir, shard)
        if fd is None:
            for held in fds:
                os.close(held)
            return None
        fds.append(fd)
    return fds


def _being_read(ring_dir: str) -> bool:
    for path in glob.glob(glob.escape(reader_lock_path(ring_dir)) + "*"):
        shard = path.rpartition(".")[2]
        fd = take_reader_lock(ring_dir, int(shard) if shard.isdigit() else 0)
        if fd is None:
            return True
        os.close(fd)
    return False


def spec_of(name: str) -> RingSpec | None:
    """The spec of the segment ``name`` from its header; None if it is not a ring segment."""
    try:
        with open(_files.segment_path(name), "rb") as segment:
            header = segment.read(_HEADER.size)
    except OSError:
        return None
    if len(header) < _HEADER.size:
        return None
    magic, version, ring_bytes, max_slots = _HEADER.unpack(header)
    if magic != MAGIC or version != VERSION:
        return None
    return RingSpec(shm_name=name, ring_bytes=ring_bytes, max_slots=max_slots,
                    **_files.dir_paths(os.path.join(tempfile.gettempdir(), name)))


def unreleased_records(spec: RingSpec) -> int | None:
    """Records written and never released (None: the segment cannot be read). Read off the
    segment's control words, without attaching a RingSet: RingSet.create runs this scan."""
    words = _control_words(spec)
    if words is None:
        return None
    blocks = [GLOBAL_WORDS + slot * SLOT_WORDS for slot in range(spec.max_slots)]
    if all(words[b + S_HEAD] == words[b + S_RELEASED] for b in blocks):
        return 0
    written = sum(words[b + S_RECORDS_WRITTEN] for b in blocks)
    released = sum(words[b + S_RECORDS_RELEASED] for b in blocks)
    return max(1, written - released)


def _control_words(spec: RingSpec) -> tuple[int, ...] | None:
    """The segment's control words now; None if it is missing or is not ``spec``'s."""
    size = data_offset(spec.max_slots)
    try:
        with open(_files.spec_segment_path(spec), "rb") as segment:
            block = segment.read(size)
    except OSError:
        return None
    if len(block) < size:
        return None
    words = struct.unpack(f"={size // U64}Q", block)
    if words[G_MAGIC] != MAGIC or words[G_RING_BYTES] != spec.ring_bytes:
        return None
    return words


def _live_producers(spec: RingSpec) -> bool:
    """Whether a live process holds a slot of the segment open, read off its control words
    (what :func:`attached_producers` reads from an attached ring set)."""
    words = _control_words(spec)
    if words is None:
        return False
    blocks = [GLOBAL_WORDS + slot * SLOT_WORDS for slot in range(spec.max_slots)]
    return any(words[b + S_STATE] == ACTIVE
               and _files.is_alive(words[b + S_PID], words[b + S_START_TICKS]) for b in blocks)


def _recorded_url(ring_dir: str) -> str | None:
    try:
        with open(os.path.join(ring_dir, SENDER_ARGS), "rb") as file:
            args = msgspec.json.decode(file.read())
        return args["config"]["url"]
    except (OSError, msgspec.DecodeError, KeyError, TypeError):
        return None


def _recorded_senders(ring_dir: str) -> int:
    """How many senders the ring set's engine ran (1 for files of older engines)."""
    try:
        with open(os.path.join(ring_dir, SENDER_ARGS), "rb") as file:
            return int(msgspec.json.decode(file.read())["spec"].get("senders", 1))
    except (OSError, msgspec.DecodeError, KeyError, TypeError, ValueError, AttributeError):
        return 1


def write_sender_args(name: str, ring_dir: str, data: bytes) -> str:
    """The sender's settings (no API key) into the ring dir, and a copy beside the segment
    (for a recovery after the ring dir was cleaned away); returns the ring dir's file."""
    path = os.path.join(ring_dir, SENDER_ARGS)
    _files.write_private(path, data)
    if tempfile.gettempdir() != _files.SEGMENT_DIR:
        _files.write_private(_files.sidecar_path(name), data)
    return path


def mark_closed(ring_dir: str) -> None:
    """The owner closed the ring set but keeps running: it will never read it again, so it
    is an orphan already (the owner keeps it only because it still holds records)."""
    # owner-only, as the folder it is in (0700) and every file the engine writes
    os.close(os.open(os.path.join(ring_dir, CLOSED_MARK), os.O_WRONLY | os.O_CREAT, 0o600))


def _dead_entries(directory: str) -> list[str]:
    """Names in ``directory`` of ring sets of this user whose owner is gone or closed them."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    uid = os.getuid()
    dead = []
    for entry in names:
        owner = _files._owner_of(entry)
        closed = os.path.exists(os.path.join(directory, entry, CLOSED_MARK))
        if owner is None or (_files.is_alive(*owner) and not closed):
            continue
        with contextlib.suppress(OSError):
            if os.lstat(os.path.join(directory, entry)).st_uid == uid:
                dead.append(entry)
    return dead


def find_orphans(url: str | None = None) -> list[Orphan]:
    """Orphans in this temp dir that hold records, and bare segments that do (``bare``);
    the empty ones are removed on the way. Bare segments of engines that delivered to
    ``url`` are first given a folder here (and are then orphans in this temp dir)."""
    bare, stray = _shm_leftovers()
    _adopt_bare_segments(bare, url)
    orphans = []
    for entry in _dead_entries(tempfile.gettempdir()):
        ring_dir = os.path.join(tempfile.gettempdir(), entry)
        if not os.path.isdir(ring_dir) or os.path.islink(ring_dir) or _being_read(ring_dir):
            continue
        spec = spec_of(entry)
        held = unreleased_records(spec) if spec is not None else 0
        recorded_url = _recorded_url(ring_dir)
        if held and recorded_url is None:  # no sender ever read it (start_sender=false): none will
            log.warning("removing ring set %s: %d records that no sender was set up to "
                        "deliver", entry, held)
            held = 0
        if held == 0 and spec is not None and _live_producers(spec):
            continue  # they may still write (a pooled worker): removed once they exit
        if held == 0:  # nothing left to deliver (or no segment): only files to remove
            _files.remove_ring_files(entry, ring_dir)
        elif held:
            orphans.append(Orphan(entry, ring_dir, recorded_url, held))
    _remove_empty_bare_segments(bare, stray)
    return orphans + _unadopted(bare)


def _shm_leftovers() -> tuple[list[str], list[str]]:
    """From one listing of the segment dir, entries of dead owners: the names of *bare*
    segments (no private dir in this temp dir) and of settings copies whose segment is gone."""
    if tempfile.gettempdir() == _files.SEGMENT_DIR:
        return [], []
    bare, stray = [], []
    for entry in _dead_entries(_files.SEGMENT_DIR):
        if entry.endswith(_files.SEGMENT_SUFFIX):
            name = entry.removesuffix(_files.SEGMENT_SUFFIX)
            if not os.path.exists(os.path.join(tempfile.gettempdir(), name)):
                bare.append(name)
        elif entry.endswith(_files.SIDECAR_SUFFIX):
            name = entry.removesuffix(_files.SIDECAR_SUFFIX)
            if not os.path.exists(_files.segment_path(name)):
                stray.append(name)
    return bare, stray


def _remove_empty_bare_segments(bare: list[str], stray: list[str]) -> None:
    """Bare segments are removed only if they hold nothing (with their settings copy) and
    no live process maps them (a producer may still write); settings copies whose segment
    is gone go too."""
    emptied = []
    for name in bare:
        if os.path.exists(os.path.join(tempfile.gettempdir(), name)):
            continue  # adopted by this scan
        spec = spec_of(name)
        if (spec is not None and unreleased_records(spec) == 0
                and not _in_use(name, _sidecar_args(name))):
            emptied.append(name)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(_files.segment_path(name))
    for name in [*emptied, *stray]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_files.sidecar_path(name))


def _adopt_bare_segments(bare: list[str], url: str | None) -> None:
    """Give every bare segment of an engine that delivered to ``url``, that holds records,
    that no live process maps and whose settings were kept beside it a new private dir here,
    so that it is found as an orphan."""
    if url is None:
        return
    for name, args in _with_settings(bare):
        if _args_url(args) != url:
            continue  # left for a scan for its own URL, which recovers it
        spec = spec_of(name)
        if spec is None or not unreleased_records(spec):
            continue  # removed after the scan if it holds nothing
        if _in_use(name, args):
            continue  # a sender or producer still at work whose dir was removed under it
        with contextlib.suppress(OSError):
            _recreate_ring_dir(name, args)


def _unadopted(bare: list[str]) -> list[Orphan]:
    """The bare segments this scan left where they are that hold records and that no live
    process maps (a sender still draining one is at work on it), with their URL."""
    listed = []
    for name, args in _with_settings(bare):
        if os.path.exists(os.path.join(tempfile.gettempdir(), name)):
            continue  # adopted by this scan: listed with the orphans here
        spec = spec_of(name)
        held = unreleased_records(spec) if spec is not None else None
        if held and not _in_use(name, args):
            listed.append(Orphan(name, str(args.get("ring_dir")), _args_url(args), held, bare=True))
    return listed


def _with_settings(bare: list[str]) -> list[tuple[str, dict]]:
    """The bare segments whose engine kept its settings beside them and whose folder is
    not in another TMPDIR, with those settings."""
    kept = []
    for name in bare:
        args = _sidecar_args(name)
        if args is not None and not os.path.exists(str(args.get("ring_dir"))):
            kept.append((name, args))  # else an older engine's (kept), or in another TMPDIR
    return kept


def _args_url(args: dict) -> str | None:
    config = args.get("config")
    return config.get("url") if isinstance(config, dict) else None


def _sidecar_args(name: str) -> dict | None:
    try:
        with open(_files.sidecar_path(name), "rb") as file:
            args = msgspec.json.decode(file.read())
    except (OSError, msgspec.DecodeError):
        return None
    return args if isinstance(args, dict) and isinstance(args.get("spec"), dict) else None


def _in_use(name: str, args: dict | None) -> bool:
    """Whether a live process works on the bare segment ``name`` (its engine's settings:
    ``args``): maps it (a producer, a sender), or holds a file of its removed folder open
    (a sender holds its reader lock from its spawn on, before it maps anything). The
    processes of this user only: others' cannot be read, nor can they open a 0600 segment
    or a 0700 folder of ours. True when /proc cannot tell."""
    if not os.path.isdir("/proc/self"):
        return True
    needle = _files.segment_path(name).encode()
    ring_dir = (args or {}).get("ring_dir")
    folder = os.path.join(os.path.realpath(ring_dir), "") if isinstance(ring_dir, str) else None
    for proc in glob.glob("/proc/[0-9]*"):
        with contextlib.suppress(OSError), open(f"{proc}/maps", "rb") as file:
            if needle in file.read():
                return True
        if folder is not None and _holds_open(proc, folder):
            return True
    return False


def _holds_open(proc: str, folder: str) -> bool:
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"{proc}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"{proc}/fd/{fd}").startswith(folder):
                    return True
    return False


def _recreate_ring_dir(name: str, args: dict) -> None:
    """The ring dir of segment ``name`` here, from its settings copy: built in a staging
    dir and renamed into place whole, so no scan sees it half made (a concurrent adopter's
    rename fails and its staging dir is removed)."""
    here = tempfile.gettempdir()
    final = os.path.join(here, name)
    spec = RingSpec(**{**args["spec"], **_files.dir_paths(final)})
    staging = tempfile.mkdtemp(prefix=".engine-adopt-", dir=here)
    try:
        _files.make_dir_files(spec, staging)
        # the counters start again from zero (the recovering sender's own are what counts)
        Control(control_path(staging), spec.max_slots, create=True, senders=spec.senders).close()
        data = msgspec.json.encode({**args, "spec": msgspec.to_builtins(spec), "ring_dir": final})
        _files.write_private(os.path.join(staging, SENDER_ARGS), data)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.warning("ring set %s: its folder %s is gone; made it again in %s to recover its "
                "records", name, args.get("ring_dir"), final)


def attached_producers(ring_set: RingSet) -> list[int]:
    """Pids of live processes that hold a slot open (they may write more)."""
    pids = []
    for slot in range(ring_set.spec.max_slots):
        if ring_set._slot_word(slot, S_STATE) != ACTIVE:
            continue
        pid = ring_set._slot_word(slot, S_PID)
        if _files.is_alive(pid, ring_set._slot_word(slot, S_START_TICKS)):
            pids.append(pid)
    return pids


def holds_records(ring_set: RingSet) -> bool:
    heads, released = ring_set.positions()
    return heads != released


def orphans_for(url: str) -> list[Orphan]:
    """The orphans an engine delivering to ``url`` recovers."""
    return [orphan for orphan in find_orphans(url) if orphan.url == url and not orphan.bare]


def recover(url: str, api_key: str | None,
            key_from: str | None = None) -> list[tuple[Orphan, subprocess.Popen]]:
    """Start a sender on every orphan of an engine that delivered to ``url``; the caller
    reaps the processes (each ends within the orphan's ``shutdown_timeout_s``).
    ``key_from``: where ``api_key`` came from, for the sender's words if it is refused."""
    started = []
    for orphan in orphans_for(url):
        proc = spawn_sender(orphan.sender_args, api_key, orphan.ring_dir, recover=True,
                            key_from=key_from)
        if proc is None:  # another engine or replay claimed it between the scan and now
            continue
        log.warning("recovering %d records that a dead engine left in ring set %s",
                    orphan.unreleased_records, orphan.name)
        started.append((orphan, proc))
    return started


def spawn_sender(args_path: str, api_key: str | None, ring_dir: str, *,
                 recover: bool = False, shard: int = 0,
                 key_from: str | None = None) -> subprocess.Popen | None:
    """``python -m engine.sender ARGS`` in a session of its own: a signal to the owner's
    process group (Ctrl-C, ``timeout``, a job scheduler) does not reach it, so it can
    settle what the rings hold; it exits when its owner is gone (see the sender). It reads
    the slots of sender ``shard`` of the ring set's ``senders``. With ``recover`` it
    delivers what an orphan holds, every slot, and exits, whoever its owner was.

    The reader lock (of its shard; every shard's for a recovery) is taken here and handed
    to the sender as an inherited descriptor (the lock belongs to the open file, which both
    share), so the ring set is never without a reader between the spawn and the sender's
    start: an owner killed in that window leaves no moment in which another engine's scan
    could take it for an orphan. None when another process already reads those slots."""
    lock_fds = (take_reader_locks(ring_dir, _recorded_senders(ring_dir)) if recover
                else [fd] if (fd := take_reader_lock(ring_dir, shard)) is not None else None)
    if lock_fds is None:
        return None
    try:
        return _popen_sender(args_path, api_key, lock_fds, recover, shard, key_from)
    finally:
        for fd in lock_fds:
            os.close(fd)  # the sender's copies hold the locks from here on


def _popen_sender(args_path: str, api_key: str | None, lock_fds: list[int], recover: bool,
                  shard: int, key_from: str | None) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("ENGINE_API_KEY", None)
    env.pop("ENGINE_SENDER_KEY_FROM", None)
    if api_key:
        env["ENGINE_SENDER_API_KEY"] = api_key
    if key_from:  # where the key came from (never the key): the sender's words if refused
        env["ENGINE_SENDER_KEY_FROM"] = key_from
    # stdout stays free for the user's program (a pipe must close when the owner exits);
    # stderr carries the sender's log lines. A session of its own also keeps Ray's raylet,
    # which kills a dead worker's whole process group, from taking the sender with it.
    argv = [sys.executable, "-m", "engine.sender", args_path,
            f"--lock-fd={','.join(map(str, lock_fds))}", *(["--recover"] if recover else []),
            *(["--shard", str(shard)] if shard else [])]
    return subprocess.Popen(argv, env=env, pass_fds=tuple(lock_fds),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, close_fds=True,
                            start_new_session=True)
