"""Every fault of docs/guarantees.md, at scale: calls produced, delivered, persisted, lost.

    python -m bench.guarantees                 # every fault, ~20,000 calls before each signal
    python -m bench.guarantees --calls 5000 --only group-sigint,disk-full

Each fault runs the pipeline of ``tests/pipeline.py`` (an owner that forks 2 producers, as
the leader of a process group of its own) against ``tests.faultserver.FaultServer`` on
loopback, with default paths in a fresh sandbox (``HOME``, ``XDG_STATE_HOME``, ``TMPDIR``).
For every call whose ``with`` block returned it tells whether the server stored it whole
(delivered), whether its missing halves wait in a dead-letter file or spool segment
(persisted), or neither yet (then it can only be in a ring set kept in shared memory) --
first right after the fault, then after the recovery the fault calls for (``engine
replay``, or the next Engine), where neither means lost. Prints a markdown table and one
JSON line per fault; exits 1 if any call was lost.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.faultserver import FaultServer
from tests.pipeline import Account, Pipeline, Sandbox, account, poll_until, wait_gone

_SETTINGS = {"shutdown_timeout_s": 5.0, "ring_bytes": 16 << 20, "max_slots": 8}


def _kept(sandbox: Sandbox) -> tuple[list[Path], list[Path]]:
    """Where engines with default paths keep what they did not deliver: the dead-letter
    file and the default spools (one per server)."""
    return [sandbox.dead_letter_path], sandbox.spool_dirs()


def _finish(run: Pipeline, timeout_s: float = 60.0) -> None:
    try:
        run.wait(timeout_s)
        run.wait_sender_gone(timeout_s)
    finally:
        run.stop()


def _signalled(sig: int, calls: int, root: Path, *, down: bool) -> tuple[Account, Account, int]:
    sandbox = Sandbox(root)
    with FaultServer() as server:
        if down:
            server.down()
        run = Pipeline(sandbox, server.url, settings=dict(_SETTINGS)).start()
        run.wait_calls(calls, timeout_s=120)
        run.killpg(sig)
        _finish(run)
        before = account(run.produced(), server.snapshot(), *_kept(sandbox))
        if down:
            server.up()
        sandbox.replay(server.url, timeout_s=300)
        after = account(run.produced(), server.snapshot(), *_kept(sandbox))
        return before, after, server.duplicate_deliveries()


def _owner_only(calls: int, root: Path) -> tuple[Account, Account, int]:
    sandbox = Sandbox(root)
    with FaultServer() as server:
        run = Pipeline(sandbox, server.url, calls=calls // 2, pace_s=0.0002,
                       settings=dict(_SETTINGS)).start()
        run.wait_calls(calls // 4, timeout_s=120)
        os.kill(run.info["owner"], signal.SIGTERM)
        _finish(run)
        before = account(run.produced(), server.snapshot(), *_kept(sandbox))
        # what the producers wrote after the sender left (past shutdown_timeout_s) is in
        # the ring set it kept
        sandbox.replay(server.url, timeout_s=300)
        after = account(run.produced(), server.snapshot(), *_kept(sandbox))
        return before, after, server.duplicate_deliveries()


def _killed(calls: int, root: Path, *, with_sender: bool,
            recover: str) -> tuple[Account, Account, int]:
    sandbox = Sandbox(root)
    with FaultServer() as server:
        run = Pipeline(sandbox, server.url, settings=dict(_SETTINGS)).start()
        run.wait_calls(calls, timeout_s=120)
        if with_sender:
            os.kill(run.info["sender"], signal.SIGKILL)
        run.killpg(signal.SIGKILL)
        _finish(run)
        wait_gone([run.info["sender"]], 60)
        before = account(run.produced(), server.snapshot(), *_kept(sandbox))
        if recover in ("engine", "engine-new-tmpdir"):
            nxt_sandbox = sandbox
            if recover == "engine-new-tmpdir":  # the job's TMPDIR removed at its end
                shutil.rmtree(sandbox.tmp)
                nxt_sandbox = Sandbox(root / "next-job")
            nxt = Pipeline(nxt_sandbox, server.url, producers=0, calls=1, name="next",
                           settings=dict(_SETTINGS)).start()
            _finish(nxt)
            segment = Path("/dev/shm") / (run.info["ring"] + ".seg")
            poll_until(lambda: not segment.exists(), timeout_s=60)
        elif recover == "replay":
            sandbox.replay(server.url, timeout_s=300)
        after = account(run.produced(), server.snapshot(), *_kept(sandbox))
        return before, after, server.duplicate_deliveries()


def _concurrent(calls: int, root: Path) -> tuple[Account, Account, int]:
    sandbox = Sandbox(root)
    # the shared dead-letter file (the default spool is one per server: the replays go to
    # another one)
    settings = {"delivery_deadline_s": 0.2, "shutdown_timeout_s": 2.0, "linger_ms": 5,
                "backoff_initial_ms": 20, "backoff_max_ms": 50, "spool_dir": "off"}
    with FaultServer() as unreachable, FaultServer() as server:
        unreachable.down()
        runs = [Pipeline(sandbox, unreachable.url, producers=1, calls=calls // 4, pace_s=0.0002,
                         settings=settings, name=f"engine{i}").start() for i in range(2)]
        while any(run.proc.poll() is None for run in runs):
            sandbox.replay(server.url, timeout_s=300)
        for run in runs:
            _finish(run)
        produced = [call for run in runs for call in run.produced()]
        before = account(produced, server.snapshot(), *_kept(sandbox))
        sandbox.replay(server.url, timeout_s=300)
        after = account(produced, server.snapshot(), *_kept(sandbox))
        return before, after, server.duplicate_deliveries()


def _disk_full(calls: int, root: Path) -> tuple[Account, Account, int]:
    sandbox = Sandbox(root)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs",
                              str(sandbox.state)], capture_output=True).returncode == 0
    try:
        with FaultServer() as server:
            server.down()
            # the disk's own ENOSPC, not the 1 GiB disk_keep_free_bytes keeps
            settings = dict(_SETTINGS, shutdown_timeout_s=2.0, delivery_deadline_s=0.5,
                            spool_dir="off", disk_keep_free_bytes=0)
            run = Pipeline(sandbox, server.url, calls=calls // 3, payload_bytes=500,
                           settings=settings).start()
            if not mounted:
                resource.prlimit(run.info["sender"], resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
            _finish(run)
            before = account(run.produced(), {}, *_kept(sandbox))
            if mounted:
                subprocess.run(["mount", "-o", "remount,size=1g", str(sandbox.state)], check=True)
            server.up()
            sandbox.replay(server.url, timeout_s=300)
            after = account(run.produced(), server.snapshot(), *_kept(sandbox))
            return before, after, server.duplicate_deliveries()
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(sandbox.state)], check=True)


def _spool_413(calls: int, root: Path) -> tuple[Account, Account, int]:
    """A spool written while the server was down, replayed against a 1 MiB body limit."""
    sandbox = Sandbox(root)
    spool_dir = root / "spool"
    settings = dict(_SETTINGS, spool_dir=str(spool_dir), delivery_deadline_s=0.5,
                    initial_request_bytes=4 << 20, shutdown_timeout_s=2.0)
    with FaultServer() as server:
        server.down()
        run = Pipeline(sandbox, server.url, calls=calls // 3, payload_bytes=1000,
                       settings=settings).start()
        _finish(run)
        before = account(run.produced(), {}, [sandbox.dead_letter_path], [spool_dir])
        server.limit_bytes = 1 << 20
        server.up()
        sandbox.replay(server.url, "--spool", str(spool_dir), timeout_s=300)
        after = account(run.produced(), server.snapshot(), [sandbox.dead_letter_path], [spool_dir])
        return before, after, server.duplicate_deliveries()


def _outage(calls: int, root: Path) -> tuple[Account, Account, int]:
    """The server down for the whole run, 2 producers tracing through 1 MiB rings: once it
    failed for 5 s with producers waiting for room, what fails goes to the spool (the
    default, one per server) at once (before: each batch's 120 s delivery_deadline_s first,
    ~10 calls/s meanwhile)."""
    sandbox = Sandbox(root)
    settings = dict(_SETTINGS, ring_bytes=1 << 20, shutdown_timeout_s=2.0)
    with FaultServer() as server:
        server.down()
        run = Pipeline(sandbox, server.url, calls=calls // 2, payload_bytes=1000,
                       settings=settings).start()
        _finish(run, timeout_s=300)
        before = account(run.produced(), {}, *_kept(sandbox))
        server.up()
        sandbox.replay(server.url, timeout_s=300)
        after = account(run.produced(), server.snapshot(), *_kept(sandbox))
        return before, after, server.duplicate_deliveries()


def _spool_bound(calls: int, root: Path) -> tuple[Account, Account, int]:
    """The server down while 2 producers trace through 1 MiB rings, the spool bounded to 64
    KiB (``spool_max_bytes``; the pipeline's calls compress ~50x): past it, what fails waits in the rings (the producers wait),
    and the server is back 5 s after the bound was said: the run delivers it itself (before
    2026-12-07 there was no bound, and batches a full disk parked were never sent to the
    server: the traced program hung once the server was back)."""
    sandbox = Sandbox(root)
    settings = dict(_SETTINGS, ring_bytes=1 << 20, shutdown_timeout_s=5.0,
                    spool_max_bytes=64 << 10)
    with FaultServer() as server:
        server.down()
        run = Pipeline(sandbox, server.url, calls=calls // 3, payload_bytes=1000,
                       settings=settings).start()
        try:
            if not poll_until(lambda: "spool_max_bytes" in run.log()
                              or run.proc.poll() is not None, timeout_s=300) \
                    or "spool_max_bytes" not in run.log():
                raise SystemExit(f"spool-bound: the bound was never reached\n{run.log()[-2000:]}")
            time.sleep(5.0)
            server.up()
        finally:
            _finish(run, timeout_s=300)
        before = account(run.produced(), server.snapshot(), *_kept(sandbox))
        sandbox.replay(server.url, timeout_s=300)  # what the spool still holds at exit
        after = account(run.produced(), server.snapshot(), *_kept(sandbox))
        return before, after, server.duplicate_deliveries()


def _frozen(calls: int, root: Path) -> tuple[Account, Account, int]:
    """The server takes every request and answers none, all along (silent_after_s at its
    default, 15 s): once it has answered nothing for that long with producers waiting, what
    waits and the requests unanswered go to the spool (before: each request's 60 s
    request_timeout_s, retried as long: 3,000 calls through a 1 MiB ring took 305 s)."""
    sandbox = Sandbox(root)
    settings = dict(_SETTINGS, ring_bytes=1 << 20, shutdown_timeout_s=2.0)
    with FaultServer(stall_s=3600.0) as server:
        run = Pipeline(sandbox, server.url, calls=calls // 2, payload_bytes=1000,
                       settings=settings).start()
        _finish(run, timeout_s=300)
        before = account(run.produced(), server.snapshot(), *_kept(sandbox))
        server.stall_s = 0.0  # requests held until now stay held: the replay's are new
        sandbox.replay(server.url, timeout_s=300)
        after = account(run.produced(), server.snapshot(), *_kept(sandbox))
        return before, after, server.duplicate_deliveries()


def _small_shm(calls: int, root: Path) -> tuple[Account, Account, int]:
    """4 producers with the engine in a mount namespace whose /dev/shm is a container's 64
    MiB (room for three rings of 16 MiB): before session 9 the fourth died by SIGBUS."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        raise SystemExit("small-shm needs root and unshare -m (a /dev/shm of its own)")
    sandbox = Sandbox(root)
    wrap = ["unshare", "-m", "sh", "-c",
            'mount -t tmpfs -o size=64m tmpfs /dev/shm && exec "$0" "$@"']
    with FaultServer() as server:
        run = Pipeline(sandbox, server.url, producers=4, calls=calls // 4,
                       settings=dict(_SETTINGS), wrap=wrap).start()
        _finish(run, timeout_s=300)
        before = account(run.produced(), server.snapshot(), *_kept(sandbox))
        return before, before, server.duplicate_deliveries()


FAULTS: dict[str, tuple[str, Callable[[int, Path], tuple[Account, Account, int]]]] = {
    "group-sigint": ("Ctrl-C: SIGINT to the process group, server up",
                     lambda n, r: _signalled(signal.SIGINT, n, r, down=False)),
    "group-sigterm": ("SIGTERM to the process group (`timeout`, a scheduler), server up",
                      lambda n, r: _signalled(signal.SIGTERM, n, r, down=False)),
    "group-sighup": ("SIGHUP to the process group (terminal closed), server up",
                     lambda n, r: _signalled(signal.SIGHUP, n, r, down=False)),
    "group-sigint-down": ("SIGINT to the group, server down; then `engine replay`",
                          lambda n, r: _signalled(signal.SIGINT, n, r, down=True)),
    "group-sigterm-down": ("SIGTERM to the group, server down; then `engine replay`",
                           lambda n, r: _signalled(signal.SIGTERM, n, r, down=True)),
    "owner-sigterm": ("SIGTERM to the owner alone, its producers go on for longer than "
                      "shutdown_timeout_s; then `engine replay`",
                      _owner_only),
    "group-sigkill": ("SIGKILL to the process group (the sender has its own session)",
                      lambda n, r: _killed(n, r, with_sender=False, recover="")),
    "sigkill-next-engine": ("SIGKILL to the group and the sender; the next Engine recovers",
                            lambda n, r: _killed(n, r, with_sender=True, recover="engine")),
    "sigkill-tmpdir-removed": ("SIGKILL to the group and the sender, the job's TMPDIR "
                               "removed; the next Engine (another TMPDIR) recovers",
                               lambda n, r: _killed(n, r, with_sender=True,
                                                    recover="engine-new-tmpdir")),
    "sigkill-replay": ("SIGKILL to the group and the sender; `engine replay` recovers",
                       lambda n, r: _killed(n, r, with_sender=True, recover="replay")),
    "concurrent-replay": ("2 engines dead-lettering to the default file (`spool_dir = \"off\"`) "
                          "+ replays meanwhile",
                          _concurrent),
    "disk-full": ("dead letters (`spool_dir = \"off\"`) on a full 1 MiB disk, server down; "
                  "then `engine replay`",
                  _disk_full),
    "spool-413": ("spool written with 4 MiB batches, replayed to a 1 MiB body limit",
                  _spool_413),
    "outage": ("server down all along, 2 producers through 1 MiB rings (producers wait: "
               "what fails goes to the default spool after 5 s); then `engine replay`", _outage),
    "spool-bound": ("server down, 2 producers through 1 MiB rings, the spool bounded to 64 KiB "
                    "(`spool_max_bytes`): past it the producers wait; the server back 5 s "
                    "later: the run delivers what waited", _spool_bound),
    "frozen": ("server takes requests and answers none, all along, 2 producers through 1 MiB "
               "rings (what waits goes to the default spool after 15 s); then `engine replay`",
               _frozen),
    "small-shm": ("4 producers, /dev/shm of 64 MiB (a container's default; rings go to the "
                  "temp dir), server up", _small_shm),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000,
                        help="calls made before each signal (scales every fault)")
    parser.add_argument("--only", default="", help="comma-separated fault names")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(FAULTS)
    print("| fault | produced | delivered | persisted (files) | neither yet (shared memory) "
          "| after recovery: delivered | lost | duplicates absorbed | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for name in names:
        what, run = FAULTS[name]
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"guarantees-{name}-") as root:
            before, after, duplicates = run(args.calls, Path(root))
        elapsed_s = time.monotonic() - started
        rows.append({"fault": name, "before": before.row(), "after": after.row(),
                     "duplicates": duplicates, "seconds": round(elapsed_s, 1)})
        print(f"| {what} | {before.produced:,} | {before.delivered:,} | {before.persisted:,} "
              f"| {before.lost:,} | {after.delivered:,} | {after.lost:,} | {duplicates:,} "
              f"| {elapsed_s:.0f} |", flush=True)
    for row in rows:
        print(json.dumps(row), file=sys.stderr)
    return 0 if all(row["after"]["lost"] == 0 for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
