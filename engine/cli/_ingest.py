"""``engine ingest``: bulk-load JSON-lines trace files through the engine, resumably.

File format (one JSON object per line, UTF-8; ``.zst`` files are zstd-compressed)::

    {"mode": "start", "project_id": "e/p", "id": ..., "op_name": ..., "started_at": ..., ...}
    {"mode": "end", "project_id": "e/p", "id": ..., "ended_at": ..., "summary": {}, ...}
    {"mode": "complete", "project_id": "e/p", "id": ..., "trace_id": ..., ...}
    {"project_id": "e/p", "id": ..., "trace_id": ..., "op_name": ..., ...}   # no mode: complete

The fields are those of the wire's start, end and complete call schemas (WIRE.md §3);
``mode`` is ignored by them. Blank lines are skipped; a line that does not decode is counted
as invalid, reported with its line number, and skipped. Lines are decoded into the server's
raw ingest models (``engine.server._ingest_models``): ids, names and timestamps are read,
the JSON-valued fields (inputs, output, ...) are checked and kept as the file's bytes, never
built into Python objects, and the item is written with them as they are
(``engine.cli._ingest_read``).

Work is split into shards (``engine.cli._ingest_plan``) handed to ``processes`` producer
processes. Resuming: each worker waits every ``checkpoint_lines`` lines until its tracer's
items are settled -- acknowledged by the server, or refused by it and so dead-lettered or
spooled (counted, on disk for ``engine replay``: stopping there would refuse the same item
at every rerun) -- and only then reports the byte offset; the parent records it in the
checkpoint file. After an interruption, when the server settles nothing for
``_FLUSH_TIMEOUT_S`` (or twice ``delivery_deadline_s`` where that is longer: an item may
wait that long before it is dead-lettered), or when a run of refusals stops the load
(``engine.cli._ingest_stop``), the same command resumes from those offsets; items after
the last checkpoint are sent again and the server's upsert by call id stores them once. The
checkpoint is removed when every shard is done. A compressed file that is not zstd, or is
cut short, is reported (what was read before is loaded). The command exits 1 when anything
was not delivered, a line was skipped or a file not read to its end.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from typing import Any

import msgspec
import zstandard

from engine.cli import _args, _summary
from engine.cli._args import CommandFailed
from engine.cli._ingest_plan import (
    Checkpoint,
    Shard,
    check_checkpoint_folder,
    default_checkpoint_path,
    file_signature,
    load_checkpoint,
    plan_shards,
    rerun_hint,
    save_checkpoint,
)
from engine.cli._ingest_progress import Progress
from engine.cli._ingest_read import Source, parse_line
from engine.producer._engine import Engine
from engine.producer._tracer import Tracer
from engine.wire._codec import uuid7

log = logging.getLogger("engine.ingest")

DEFAULT_CHECKPOINT_LINES = 20_000
_PROGRESS_LINES = 2_000
_NAMED_INVALID_LINES = 3  # per shard: logged as they are met, numbered in the summary
_PLACEHOLDER_PROJECT = "ingest/ingest"  # the engine's default; every item names its own
_FLUSH_TIMEOUT_S = 600.0
_WORKER_EXIT_TIMEOUT_S = 30.0
# Default workers: half the cores -- the sender processes (one per four cores with
# senders = "auto", each moving ~250k calls/s) and often the server take the rest; a worker
# reads ~100k+ lines/s. At least 2 (what a 2-core box does best), at most 16.
_MIN_DEFAULT_PROCESSES, _MAX_DEFAULT_PROCESSES = 2, 16


def default_processes(cpus: int | None = None) -> int:
    """Worker processes when ``--processes`` is not given: half the cores, 2..16."""
    cpus = cpus or os.cpu_count() or 1
    return max(_MIN_DEFAULT_PROCESSES, min(_MAX_DEFAULT_PROCESSES, cpus // 2))


class IngestSummary(msgspec.Struct, kw_only=True):
    items: int = 0
    starts: int = 0
    ends: int = 0
    completes: int = 0
    invalid_lines: int = 0
    elapsed_s: float = 0.0
    resumed: bool = False
    acked: int = 0  # the engine's items (a complete call, or a start or an end)
    spooled: int = 0
    dead_lettered: int = 0
    undelivered: int = 0  # records neither acknowledged nor saved
    dead_by_reason: dict[str, int] = {}  # the sender's dead_* counters
    invalid_at: list[tuple[str, int]] = []  # (file, line number) of the first few invalid lines
    problems: list[str] = []  # files not read to their end (not zstd, cut short)


# -- the worker processes -----------------------------------------------------------------


class _Counts(msgspec.Struct):
    start: int = 0
    end: int = 0
    complete: int = 0
    invalid: int = 0
    invalid_at: list[int] = []  # the numbers of the first few invalid lines of the shard


class _NotSettled(Exception):
    """The server neither acknowledged nor refused what a worker sent, in time."""


def _write(tracer: Tracer, mode: str, item: Any, project: str | None) -> None:
    if project is not None:
        item.project_id = project
    if mode == "start":  # the server would assign them: ingest does, as call_start does
        item.id = item.id or uuid7()
        item.trace_id = item.trace_id or uuid7()
    tracer.enqueue(mode, item)


def ingest_shard(tracer: Tracer, index: int, shard: Shard, project: str | None,
                 checkpoint_lines: int, out: Any, settle_s: float = _FLUSH_TIMEOUT_S) -> None:
    """Worker body: send the shard's lines; report progress, and offsets once settled."""
    with ExitStack() as stack:
        try:
            source = Source(shard.path, shard.done, stack)
        except zstandard.ZstdError as exc:
            out.put(("problem", index, None, _zstd_problem(shard, None, exc)))
            offset = shard.done
        else:
            offset = _send_lines(tracer, index, shard, source, project, checkpoint_lines, out,
                                 settle_s)
    _commit(tracer, index, offset, out, settle_s)
    out.put(("done", index, None, 0))


def _send_lines(tracer: Tracer, index: int, shard: Shard, source: Source, project: str | None,
                checkpoint_lines: int, out: Any, settle_s: float) -> int:
    """Send the shard's lines, committing every ``checkpoint_lines``; the offset reached."""
    counts, offset, lines_since_commit, unreported, read_bytes = _Counts(), shard.done, 0, 0, 0
    lines_committed, invalid, cut, mode = 0, 0, 0, "complete"
    stream, problem = source.stream, None
    while shard.end is None or offset < shard.end:
        try:
            line = stream.readline()
        except zstandard.ZstdError as exc:
            whole = source.line_number(lines_committed + lines_since_commit) - 1
            problem = _zstd_problem(shard, whole, exc)
            break
        if not line:
            break
        try:
            mode = _ingest_line(tracer, line, project, counts, mode)
        except ValueError as exc:
            if source.truncated and not line.endswith(b"\n"):
                cut = 1  # the end of a stream cut short: not a line of the file
            else:
                invalid += 1
                _invalid(source, counts, invalid, lines_committed + lines_since_commit, offset, exc)
        offset += len(line)
        read_bytes += len(line)
        lines_since_commit += 1
        unreported += 1
        if unreported >= _PROGRESS_LINES:
            out.put(("read", index, counts, read_bytes))
            counts, unreported, read_bytes = _Counts(), 0, 0
        if lines_since_commit >= checkpoint_lines:
            _commit(tracer, index, offset, out, settle_s)
            lines_committed, lines_since_commit = lines_committed + lines_since_commit, 0
    out.put(("read", index, counts, read_bytes))
    if problem is None and source.truncated:
        whole = source.line_number(lines_committed + lines_since_commit - cut) - 1
        problem = f"{shard.path}: truncated zstd stream after {whole:,} lines (those are loaded)"
    if problem is not None:
        out.put(("problem", index, None, problem))
    return offset


def _ingest_line(tracer: Tracer, line: bytes, project: str | None, counts: _Counts,
                 guess: str) -> str:
    """Send one line; the mode of its item (the guess for the next line); ValueError for a
    line that is not an item, or one too large for a request."""
    parsed = parse_line(line, guess)
    if parsed is None:
        return guess
    mode, item = parsed
    _write(tracer, mode, item, project)
    setattr(counts, mode, getattr(counts, mode) + 1)
    return mode


def _invalid(source: Source, counts: _Counts, invalid: int, lines_read: int, offset: int,
             exc: ValueError) -> None:
    """Count an invalid line; the shard's first few are logged and named in the summary."""
    counts.invalid += 1
    if invalid <= _NAMED_INVALID_LINES:
        number = source.line_number(lines_read)
        counts.invalid_at.append(number)
        log.warning("%s line %d (byte %d): skipped an invalid line: %s", source.path, number,
                    offset, exc)


def _zstd_problem(shard: Shard, lines: int | None, exc: Exception) -> str:
    if shard.done == 0 and not lines:
        return f"{shard.path}: not a zstd file ({exc})"
    after = "" if lines is None else f" after {lines:,} lines (those are loaded)"
    return f"{shard.path}: corrupt zstd stream{after}: {exc}"


def _commit(tracer: Tracer, index: int, offset: int, out: Any, settle_s: float) -> None:
    """Record ``offset`` once everything before it is settled: acknowledged, or refused by
    the server and so dead-lettered or spooled (on disk, counted, for ``engine replay``:
    going on past it loses nothing, stopping would refuse the same item at every rerun)."""
    if not tracer.settle(settle_s):
        raise _NotSettled(f"the server did not acknowledge the lines before byte {offset:,} "
                          f"within {settle_s:g} s")
    out.put(("commit", index, None, offset))


def _worker(tracer: Tracer, jobs: list[tuple[int, Shard]], project: str | None,
            checkpoint_lines: int, out: Any, settle_s: float) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        for index, shard in jobs:
            try:
                ingest_shard(tracer, index, shard, project, checkpoint_lines, out, settle_s)
            except (_NotSettled, OSError) as exc:  # the parent says it, in one line
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                out.put(("failed", index, None, f"{shard.path}: {reason}"))
                raise SystemExit(1) from None
    except KeyboardInterrupt:  # Ctrl-C reaches the whole group: the command says it, once
        raise SystemExit(130) from None  # (what was written is in the rings, delivered)
    finally:
        tracer.close()


# -- the parent: workers, checkpoint, progress ----------------------------------------------


def _deal(shards: list[Shard], processes: int) -> list[list[tuple[int, Shard]]]:
    """Unfinished shards, dealt round-robin to at most ``processes`` workers."""
    todo = [(i, s) for i, s in enumerate(shards) if s.end is None or s.done < s.end]
    hands: list[list[tuple[int, Shard]]] = [[] for _ in range(min(processes, len(todo)))]
    for n, job in enumerate(todo):
        hands[n % len(hands)].append(job)
    return hands


def _total_bytes(shards: list[Shard]) -> int | None:
    """Progress is by bytes; unknown (None) when a compressed file is among the inputs."""
    if any(s.end is None for s in shards):
        return None
    return sum(s.end - s.start for s in shards)


def run_ingest(paths: list[str], url: str, *, processes: int | None = None,
               project: str | None = None,
               checkpoint_path: str | None = None, checkpoint_lines: int = DEFAULT_CHECKPOINT_LINES,
               progress: bool | None = None, config_file: str | None = None,
               **config: Any) -> IngestSummary:
    """Ingest ``paths`` into the trace server at ``url``; see the module doc (``processes``:
    :func:`default_processes` when None)."""
    processes = processes or default_processes()
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"input file {path} does not exist")
    checkpoint_path = checkpoint_path or default_checkpoint_path(paths)
    saved = load_checkpoint(checkpoint_path, paths)
    checkpoint = saved or Checkpoint(files=[file_signature(p) for p in paths],
                                     shards=plan_shards(paths, processes))
    summary = IngestSummary(resumed=saved is not None)
    started_s = time.monotonic()
    total = _total_bytes(checkpoint.shards)
    bar = Progress(total, sum(s.done - s.start for s in checkpoint.shards),
                    sys.stderr.isatty() if progress is None else progress)
    config.setdefault("project", project or _PLACEHOLDER_PROJECT)
    with Engine(url=url, config_file=config_file, **config) as engine:
        _run_workers(engine, checkpoint, checkpoint_path, processes, project, checkpoint_lines,
                     summary, bar)
        _settled(summary, engine.close())
    bar.close()
    summary.elapsed_s = time.monotonic() - started_s
    with suppress(FileNotFoundError):  # none was written when nothing was to read
        os.unlink(checkpoint_path)
    return summary


def _settled(summary: IngestSummary, stats: dict[str, Any]) -> None:
    summary.acked = stats.get("items_acked", 0)
    summary.spooled = stats.get("spooled_items", 0)
    summary.dead_lettered = stats.get("dead_letters", 0)
    summary.undelivered = stats.get("undelivered", 0)
    summary.dead_by_reason = {k: v for k, v in stats.items()
                              if k.startswith("dead_") and k != "dead_letters" and v}


def _run_workers(engine: Engine, checkpoint: Checkpoint, checkpoint_path: str, processes: int,
                 project: str | None, checkpoint_lines: int, summary: IngestSummary,
                 bar: Progress) -> None:
    from engine.cli._ingest_stop import RefusalRun  # the command's, not its workers'

    context = multiprocessing.get_context(_start_method())
    out = context.Queue()
    # the sender settles an item within delivery_deadline_s of sending it, maybe after a
    # backlog as long: waiting less would stop a load the configuration lets go on
    settle_s = max(_FLUSH_TIMEOUT_S, 2 * engine.config.delivery_deadline_s)
    workers = [context.Process(target=_worker, name=f"engine-ingest-{n}",
                               args=(engine.producer(), jobs, project, checkpoint_lines, out,
                                     settle_s))
               for n, jobs in enumerate(_deal(checkpoint.shards, processes))]
    for worker in workers:
        worker.start()
    failures: list[str] = []
    try:
        refusals = RefusalRun(engine.stats, engine.config)
        _collect(out, workers, checkpoint, checkpoint_path, summary, bar, failures, refusals)
        for worker in workers:
            worker.join(_WORKER_EXIT_TIMEOUT_S)
    finally:
        for worker in workers:  # only on an error or a worker stuck past its last message
            if worker.is_alive():
                worker.terminate()
            worker.join()
    failed = [w.name for w in workers if w.exitcode]
    if failed:
        what = "; ".join(failures) or f"ingest workers failed: {', '.join(failed)}"
        raise CommandFailed(f"ingest: {what}; {rerun_hint(checkpoint_path)}")


def _start_method() -> str:
    """fork where it is cheap and safe: on Linux, when every other thread of the command is
    one of the engine's own ("engine-..."; the sender's watchdog, the server's URL watcher),
    whose locks a worker never takes; a thread of someone else's (``run_ingest`` called
    from a threaded program) could hold one across the fork, so then spawn. A forked worker
    starts in milliseconds; a spawned one is a new interpreter importing the engine (~70 ms
    of CPU) and brings multiprocessing's resource tracker, which a small file pays in its
    rate. The engine's at-fork hooks give a forked worker its own ring slot."""
    main = threading.main_thread()
    ours = all(t is main or t.name.startswith("engine-") for t in threading.enumerate())
    return "fork" if sys.platform == "linux" and ours else "spawn"


def _collect(out: Any, workers: list, checkpoint: Checkpoint, checkpoint_path: str,
             summary: IngestSummary, bar: Progress, failures: list[str], refusals: Any) -> None:
    """Take the workers' messages until every shard is done or a worker died (``failures``:
    what the dead said); a run of refusals (``refusals``) stops the load."""
    pending = {i for i, s in enumerate(checkpoint.shards) if s.end is None or s.done < s.end}
    while pending:
        stop = refusals.stop_reason()
        if stop is not None:
            raise CommandFailed(f"ingest: {stop}; {rerun_hint(checkpoint_path)}")
        try:
            kind, index, counts, value = out.get(timeout=0.5)
        except queue.Empty:
            if any(w.exitcode not in (None, 0) for w in workers) or not any(w.is_alive() for w in workers):
                return
            continue
        if kind == "read":
            _count(summary, counts, checkpoint.shards[index].path)
            bar.add(counts.start + counts.end + counts.complete, value)
        elif kind == "commit":
            checkpoint.shards[index].done = value
            save_checkpoint(checkpoint_path, checkpoint)
        elif kind == "problem":
            log.error("%s", value)
            summary.problems.append(value)
        elif kind == "failed":
            failures.append(value)
        else:
            pending.discard(index)


def _count(summary: IngestSummary, counts: _Counts, path: str) -> None:
    summary.invalid_at.extend((path, n) for n in counts.invalid_at)
    summary.starts += counts.start
    summary.ends += counts.end
    summary.completes += counts.complete
    summary.invalid_lines += counts.invalid
    summary.items += counts.start + counts.end + counts.complete


# -- the command -------------------------------------------------------------------------


def add(subparsers: argparse._SubParsersAction) -> None:
    ingest = _args.add_command(
        subparsers, "ingest", "bulk-load JSON-lines trace files (optionally .zst) through the engine",
        "Bulk-load start/end/complete items from JSON-lines files (one item per line, see "
        "docs/configuration.md) from several producer processes; resumable. Items the server "
        "refuses are dead-lettered (`engine replay` sends them) and the load goes on, unless "
        "it refuses everything: 1,000 items or more in a row refused for one reason over 10 s "
        "or more, none acknowledged (a key not granted the project, a server down past "
        "delivery_deadline_s), stop it with one line, exit 1, the checkpoint kept. Exit 1 "
        "when an item was not delivered, an invalid line was skipped (the summary names the "
        "first by line number) or a file was not read to its end (not zstd, cut short).")
    ingest.add_argument("files", nargs="+", metavar="FILE", type=_args.existing_file,
                        help="JSON-lines trace file(s), .zst too")
    ingest.add_argument("--to", type=_args.url, default=None,
                        help="trace server URL (default: start `engine serve` with its default db)")
    ingest.add_argument("--processes", type=_args.positive_int, default=None,
                        help="worker processes reading the files (default: half the cores, "
                             f"2 to 16: {default_processes()} here)")
    ingest.add_argument("--project", type=_args.project, default=None,
                        help="entity/project to put every item in (default: each item's own project_id)")
    ingest.add_argument("--checkpoint", default=None,
                        help="progress file for resuming (default FILE.ingest-checkpoint)")
    ingest.add_argument("--checkpoint-lines", type=_args.positive_int,
                        default=DEFAULT_CHECKPOINT_LINES,
                        help="lines between acknowledged checkpoints, per process (default 20,000)")
    ingest.add_argument("--no-progress", action="store_true", help="no progress bar")
    _args.add_config_flags(ingest)
    ingest.set_defaults(func=run)


@contextmanager
def _resume_hint(checkpoint: str) -> Iterator[None]:
    """On Ctrl-C or SIGTERM, say how to go on before the command's last line."""
    try:
        yield
    except KeyboardInterrupt:
        print(f"engine ingest: stopped before the end; {rerun_hint(checkpoint)}", file=sys.stderr)
        raise


def run(args: argparse.Namespace) -> int:
    from engine.cli import _probe  # urllib: the command's, not its workers'
    from engine.common._config import api_key_source
    from engine.server import serve_subprocess

    _args.setup_logging(args)
    fixed = {"project": args.project or _PLACEHOLDER_PROJECT,
             **({"url": args.to} if args.to else {})}
    cfg = _args.load_settings(args, **fixed)
    checkpoint = args.checkpoint or default_checkpoint_path(args.files)
    load_checkpoint(checkpoint, args.files)  # one for other files is refused before anything starts
    check_checkpoint_folder(checkpoint)
    with ExitStack() as stack:
        stack.enter_context(_args.sigterm_interrupts())
        stack.enter_context(_resume_hint(checkpoint))
        url = args.to or stack.enter_context(serve_subprocess())
        _probe.server_info(url, cfg.api_key, key_from=api_key_source(args.config))
        summary = run_ingest(
            args.files, url, processes=args.processes, project=args.project,
            checkpoint_path=checkpoint, checkpoint_lines=args.checkpoint_lines,
            progress=False if args.no_progress else None, config_file=args.config,
            **_args.config_overrides(args),
        )  # fmt: skip
    rate = summary.items / summary.elapsed_s if summary.elapsed_s else 0.0
    stats = {"items_acked": summary.acked, "spooled_items": summary.spooled,
             "dead_letters": summary.dead_lettered, "undelivered": summary.undelivered,
             **summary.dead_by_reason}
    line, delivered = _summary.delivery(stats, msgspec.structs.replace(cfg, url=url))
    print(f"engine ingest: read {summary.items:,} items ({summary.completes:,} complete, "
          f"{summary.starts:,} starts, {summary.ends:,} ends) in {summary.elapsed_s:.1f} s "
          f"({rate:,.0f}/s); {_skipped(summary)}{'; resumed' if summary.resumed else ''}; {line}")
    return 0 if delivered and not summary.invalid_lines and not summary.problems else 1


def _skipped(summary: IngestSummary) -> str:
    """What was not read: invalid lines (the first few by number), files cut short."""
    text = f"{summary.invalid_lines:,} invalid lines skipped"
    if summary.invalid_at:
        first = sorted(summary.invalid_at)[:_NAMED_INVALID_LINES]
        named = ", ".join(f"{path} line {n}" for path, n in first)
        text += f" ({named}{', ...' if summary.invalid_lines > len(first) else ''})"
    if summary.problems:
        text += f"; {len(summary.problems)} files not read to their end (said above)"
    return text

