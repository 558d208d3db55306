"""``engine stats``: a live view of a running engine, read from its shared control block.

Discovery needs nothing from the engine beyond what it already leaves: every ring set has a
private directory ``<tmpdir>/engine-rings-<owner pid>-<start ticks>-<random>/`` holding the
``control`` file (see ``engine/ring/_files.py``). Live engines are those directories whose
owner process is still the same process (pid and start time match).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import time
from typing import Any

from engine.cli import _args
from engine.cli._args import CommandFailed
from engine.common._control import Control, control_path
from engine.ring import _files as ring_files

DROP_REASONS = ("dead_too_large", "dead_invalid", "dead_http", "dead_deadline", "dead_shutdown")
PRODUCER_DROPS = ("dropped_full", "raised_full", "too_large")


def live_ring_dirs(parent: str | None = None) -> list[tuple[int, str]]:
    """(owner pid, ring dir) of every engine whose owner is alive, oldest pid first."""
    parent = parent or tempfile.gettempdir()
    found = []
    for path in glob.glob(os.path.join(parent, ring_files.NAME_PREFIX + "*")):
        owner = ring_files._owner_of(os.path.basename(path))
        if owner and os.path.exists(control_path(path)) and ring_files.is_alive(*owner):
            found.append((owner[0], path))
    return sorted(found)


def open_control(ring_dir: str) -> Control:
    """Attach to a running engine's control block (its sizes come from the file)."""
    return Control(control_path(ring_dir))


def add(subparsers: argparse._SubParsersAction) -> None:
    stats = _args.add_command(
        subparsers, "stats", "live view of a running engine",
        "Rates, in flight, concurrency, size target and drops of a running engine.")
    which = stats.add_mutually_exclusive_group()
    which.add_argument("--pid", type=_args.pid, default=None, help="the engine owner's pid")
    which.add_argument("--ring-dir", type=_args.existing_dir, default=None,
                       help="the engine's ring directory")
    stats.add_argument("--interval-s", type=_args.positive_float, default=1.0,
                       help="refresh period (default 1.0)")
    stats.add_argument("--once", action="store_true", help="print one line and exit")
    stats.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return watch(find_ring_dir(args.pid, args.ring_dir), args.interval_s, args.once)


def find_ring_dir(pid: int | None, ring_dir: str | None) -> str:
    if ring_dir:
        if not os.path.exists(control_path(ring_dir)):
            raise CommandFailed(f"stats: {ring_dir} has no control file: not the ring directory "
                                "of an engine (omit --ring-dir to find running engines)")
        return ring_dir
    engines = live_ring_dirs()
    if pid is not None:
        engines = [(p, d) for p, d in engines if p == pid]
    if len(engines) == 1:
        return engines[0][1]
    if not engines:
        raise CommandFailed("stats: no running engine found" + (f" for pid {pid}" if pid else "")
                            + " (an engine is running while a process holds an open Engine)")
    listing = ", ".join(f"--pid {p}" for p, _ in engines)
    raise CommandFailed(f"stats: several engines are running; choose one with {listing}")


def snapshot(control: Control) -> dict[str, Any]:
    return {**control.sender_snapshot(), **control.producer_totals()}


def render(now: dict[str, Any], before: dict[str, Any], interval_s: float) -> str:
    def rate(name: str) -> float:
        return (now[name] - before[name]) / interval_s if interval_s > 0 else 0.0

    drops = ", ".join(f"{r}={now[r]}" for r in DROP_REASONS + PRODUCER_DROPS if now[r]) or "none"
    return (
        f"acked {now['items_acked']:,} items ({rate('items_acked'):,.0f}/s, "
        f"{rate('bytes_sent_wire') / 1e6:,.1f} MB/s on the wire) | "
        f"in flight {now['in_flight_requests']} req / {now['in_flight_bytes']:,} B | "
        f"concurrency {now['concurrency_limit']} | size target {now['size_target_bytes']:,} B | "
        f"retries {now['retries']} | spooled {now['spooled_items']} | "
        f"p50 {now['latency_p50_us'] / 1000:.1f} ms | drops: {drops}"
    )


def watch(ring_dir: str, interval_s: float, once: bool) -> int:
    control = open_control(ring_dir)
    before, before_s = snapshot(control), time.monotonic()
    try:
        while True:
            time.sleep(interval_s)  # the display period, not a synchronisation
            now, now_s = snapshot(control), time.monotonic()
            line = render(now, before, now_s - before_s)
            if once or not sys.stdout.isatty():
                print(line, flush=True)
            else:
                sys.stdout.write("\r" + line + "\x1b[K")
                sys.stdout.flush()
            if once:
                return 0
            before, before_s = now, now_s
    except KeyboardInterrupt:
        print()
        return 0
    finally:
        control.close()
