"""A real pipeline to signal, kill and starve: shared by the delivery-guarantee tests and
``python -m bench.guarantees``.

:class:`Sandbox` points every default path (``HOME``, ``XDG_STATE_HOME``, ``TMPDIR``) at a
private directory, so engines with default settings in one test never meet another run's
files. :class:`Pipeline` runs ``tests/pipeline_owner.py`` as the leader of a new process
group (as a shell starts a job), so a test can ``os.killpg`` exactly the processes it
started. :func:`account` tells, for every call whose ``with`` block returned, whether the
server stored it whole, whether it waits in a dead-letter file or spool segment, or neither
(lost).
"""

from __future__ import annotations

import glob
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from engine.ring import _files as ring_files

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "test-entity/pipeline"
_START_TIMEOUT_S = 30.0


def bare_env(**extra: str) -> dict[str, str]:
    """A bare environment for a program under test: no ``ENGINE_*`` settings, no ``HOME``;
    only ``PATH``, ``PYTHONPATH`` and this session's state home (tests/conftest.py), so the
    spool and dead letters of an engine with default paths never land in the real user's
    ``~/.local/state``."""
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": ".",
            "XDG_STATE_HOME": os.environ["XDG_STATE_HOME"], **extra}


class Sandbox:
    """Default paths of one run: ``HOME``, ``XDG_STATE_HOME`` and ``TMPDIR`` under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.state = root / "state"
        self.tmp = root / "tmp"
        for path in (self.home, self.state, self.tmp):
            path.mkdir(parents=True, exist_ok=True)

    @property
    def dead_letter_path(self) -> Path:
        """Where an engine with default settings keeps its dead letters."""
        return self.state / "engine" / "dead_letters.jsonl"

    def spool_dirs(self) -> list[Path]:
        """The default spools (one per server) engines with default settings made here."""
        return sorted(p for p in (self.state / "engine" / "spool").glob("*") if p.is_dir())

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
        env.update(HOME=str(self.home), XDG_STATE_HOME=str(self.state), TMPDIR=str(self.tmp),
                   PYTHONPATH=str(ROOT), ENGINE_LOG_LEVEL="INFO")
        env.update(extra)
        return env

    def run(self, *argv: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
        """A command (``engine replay``, ...) with this sandbox's defaults."""
        return subprocess.run([sys.executable, *argv], env=self.env(), capture_output=True,
                              text=True, timeout=timeout_s, cwd=str(ROOT))

    def replay(self, url: str, *flags: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
        return self.run("-m", "engine", "replay", "--to", url, *flags, timeout_s=timeout_s)


@dataclass
class Pipeline:
    """One owner process (group leader) with ``producers`` forked producers, tracing calls."""

    sandbox: Sandbox
    url: str
    producers: int = 2
    calls: int = 0  # per process; 0 = until a signal
    settings: dict[str, Any] = field(default_factory=dict)
    payload_bytes: int = 200
    pace_s: float = 0.0
    name: str = "run"
    wrap: list[str] = field(default_factory=list)  # argv prefix (``unshare -m sh -c …``)
    proc: subprocess.Popen | None = None
    info: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] | None = None  # close()'s, when the owner ended normally

    @property
    def ids_dir(self) -> Path:
        return self.sandbox.root / f"{self.name}-ids"

    @property
    def log_path(self) -> Path:
        return self.sandbox.root / f"{self.name}.log"

    def start(self, *, env: dict[str, str] | None = None) -> Pipeline:
        self.ids_dir.mkdir(exist_ok=True)
        args = {"url": self.url, "project": PROJECT, "producers": self.producers,
                "calls": self.calls, "settings": self.settings, "ids_dir": str(self.ids_dir),
                "payload_bytes": self.payload_bytes, "pace_s": self.pace_s}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.wrap, sys.executable, "-m", "tests.pipeline_owner", json.dumps(args)],
                stdout=subprocess.PIPE, stderr=log, env=env or self.sandbox.env(),
                cwd=str(ROOT), start_new_session=True)
        self.info = json.loads(_read_line(self.proc, _START_TIMEOUT_S, self.log_path))
        return self

    @property
    def pgid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_calls(self, count: int, timeout_s: float = 30.0) -> int:
        """Wait until at least ``count`` calls returned (all processes together)."""
        deadline = time.monotonic() + timeout_s
        while (made := len(self.produced())) < count:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"only {made} of {count} calls made; log:\n{self.log()}")
            time.sleep(0.02)
        return made

    def killpg(self, sig: int) -> None:
        os.killpg(self.pgid, sig)

    def wait(self, timeout_s: float = 60.0) -> int:
        """The owner's exit code, once it and every producer of its group have exited."""
        code = self.proc.wait(timeout_s)
        wait_gone(_group_members(self.pgid), timeout_s)
        rest = self.proc.stdout.read().decode().split("\n")
        self.proc.stdout.close()
        self.stats = json.loads(rest[-2]) if len(rest) > 1 else None
        return code

    def wait_sender_gone(self, timeout_s: float = 60.0) -> None:
        wait_gone([self.info["sender"]], timeout_s)

    def stop(self) -> None:
        """SIGKILL whatever is left of this run (its group and its sender): test cleanup."""
        if self.proc is None:
            return
        for pid in [*_group_members(self.pgid), self.info.get("sender")]:
            if pid and ring_files.process_start_ticks(pid) is not None:
                os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()

    def produced(self) -> list[str]:
        ids = []
        for path in self.ids_dir.glob("*.ids"):
            ids += [line for line in path.read_text().split("\n") if len(line) == 36]
        return ids

    def produced_per_process(self) -> dict[int, int]:
        return {int(path.stem): len(path.read_text().split()) for path in self.ids_dir.glob("*.ids")}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _read_line(proc: subprocess.Popen, timeout_s: float, log_path: Path) -> str:
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            raise AssertionError(f"owner printed nothing in {timeout_s} s: {log_path.read_text()}")
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(f"owner exited at start: {log_path.read_text()}")
    return line.decode()


def _group_members(pgid: int) -> list[int]:
    members = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_bytes().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members.append(int(stat.split("/")[2]))
    return members


def poll_until(predicate: Callable[[], bool], timeout_s: float) -> bool:
    """Wait until ``predicate()`` (files, processes: nothing notifies us) or the timeout."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def wait_gone(pids: list[int | None], timeout_s: float) -> None:
    """Wait until none of ``pids`` runs (zombies count as gone)."""
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        while pid and ring_files.process_start_ticks(pid) is not None:
            if time.monotonic() > deadline:
                raise AssertionError(f"process {pid} still runs after {timeout_s} s")
            time.sleep(0.02)


# -- where each call is --------------------------------------------------------------------

class _Half(msgspec.Struct):
    id: str | None = None


class _Upsert(msgspec.Struct):
    mode: str
    req: dict[str, _Half]


class _Batch(msgspec.Struct):
    batch: list[msgspec.Raw]


def item_halves(route: str, item: bytes) -> list[tuple[str, str]]:
    """(half, call id) pairs an item carries: a complete call is both halves."""
    if route.endswith("/calls/complete"):
        return [(h, msgspec.json.decode(item, type=_Half).id) for h in ("start", "end")]
    if route.endswith("/call/upsert_batch"):
        upsert = msgspec.json.decode(item, type=_Upsert)
        return [(upsert.mode, upsert.req[upsert.mode].id)]
    wrapped = msgspec.json.decode(item, type=dict[str, _Half])  # v2 {"start": ...} / {"end": ...}
    return [(half, body.id) for half, body in wrapped.items()]


def body_items(route: str, body: bytes) -> list[bytes]:
    if route.endswith(("/calls/complete", "/call/upsert_batch")):
        return [bytes(raw) for raw in msgspec.json.decode(body, type=_Batch).batch]
    return [body]


def persisted_halves(dead_letter_paths: list[Path], spool_dirs: list[Path]) -> set[tuple[str, str]]:
    """Every (half, call id) waiting in dead-letter files (claimed ones too) or spools."""
    from engine.sender._deadletter import read_dead_letters
    from engine.sender._spool import Spool

    halves: set[tuple[str, str]] = set()
    for path in dead_letter_paths:
        for file in glob.glob(f"{path}*"):
            for letter in read_dead_letters(file):
                halves.update(item_halves(letter.route, letter.item_json))
    for directory in spool_dirs:
        if directory.exists():
            spool = Spool(directory)
            for entry in spool.pending():
                route, body = spool.load(entry)
                for item in body_items(route, body):
                    halves.update(item_halves(route, item))
    return halves


@dataclass
class Account:
    produced: int
    delivered: int
    persisted: int
    lost: int
    lost_ids: list[str]

    def row(self) -> dict[str, int]:
        return {"produced": self.produced, "delivered": self.delivered,
                "persisted": self.persisted, "lost": self.lost}


def account(produced: list[str], stored: dict[tuple[str, str], dict[str, Any]],
            dead_letter_paths: list[Path] = (), spool_dirs: list[Path] = ()) -> Account:
    """Where each produced call is: stored whole, or each missing half persisted, or lost."""
    kept = persisted_halves(list(dead_letter_paths), list(spool_dirs))
    delivered = persisted = 0
    lost_ids = []
    for call_id in set(produced):
        call = stored.get((PROJECT, call_id), {})
        have = {"start": "started_at" in call, "end": "ended_at" in call}
        if all(have.values()):
            delivered += 1
        elif all(have[h] or (h, call_id) in kept for h in have):
            persisted += 1
        else:
            lost_ids.append(call_id)
    return Account(len(set(produced)), delivered, persisted, len(lost_ids), lost_ids)
