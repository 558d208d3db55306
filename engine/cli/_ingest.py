"""``engine ingest``: bulk-load JSON-lines trace files through the engine, resumably.

File format (one JSON object per line, UTF-8; ``.zst`` files are zstd-compressed)::

    {"mode": "start", "project_id": "e/p", "id": ..., "op_name": ..., "started_at": ..., ...}
    {"mode": "end", "project_id": "e/p", "id": ..., "ended_at": ..., "summary": {}, ...}
    {"mode": "complete", "project_id": "e/p", "id": ..., "trace_id": ..., ...}
    {"project_id": "e/p", "id": ..., "trace_id": ..., "op_name": ..., ...}   # no mode: complete

The fields are those of the wire's start, end and complete call schemas (WIRE.md §3);
``mode`` is ignored by them. Blank lines are skipped; a line that does not decode is counted
as invalid, reported, and skipped. Lines are decoded into the server's raw ingest models
(``engine.server._ingest_models``): ids, names and timestamps are read, the JSON-valued
fields (inputs, output, ...) are checked and kept as the file's bytes, never built into
Python objects, and the item is written with them as they are.

Work is split into shards (byte ranges of plain files cut at line boundaries, whole
compressed files) handed to ``processes`` producer processes. Resuming: each worker flushes
its tracer every ``checkpoint_lines`` lines -- the server has then acknowledged everything
before -- and only then reports the byte offset; the parent records it in the checkpoint
file (atomically replaced, mode 0600). After an interruption the same command resumes from
those offsets; items after the last checkpoint are sent again and the server's upsert by
call id stores them once. The checkpoint is removed when every shard is done.
"""

from __future__ import annotations

import argparse
import io
import logging
import multiprocessing
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, BinaryIO

import msgspec
import zstandard

from engine.cli import _args, _summary
from engine.cli._args import CommandFailed, UsageError
from engine.producer._engine import Engine
from engine.producer._tracer import Tracer
from engine.server._ingest_models import (
    RawCompletedCall,
    RawEndedCall,
    RawStartedCall,
    check_call,
)
from engine.server._limits import MAX_JSON_DEPTH, json_depth_over
from engine.wire._codec import native_struct_plan, uuid7

log = logging.getLogger("engine.ingest")

DEFAULT_CHECKPOINT_LINES = 20_000
_PROGRESS_LINES = 2_000
_MIN_SHARD_BYTES = 1 << 20
# Lines of a few KiB: the default 8 KiB buffer costs a read() every other line
_READ_BUFFER_BYTES = 1 << 20
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


class Shard(msgspec.Struct, kw_only=True):
    path: str
    start: int  # byte offset (of the decompressed stream for .zst files)
    end: int | None  # None: to the end of the file
    done: int  # every line before this offset is acknowledged by the server


class _FileSig(msgspec.Struct, kw_only=True):
    path: str
    size_bytes: int
    mtime_ns: int


class Checkpoint(msgspec.Struct, kw_only=True):
    version: int = 1
    files: list[_FileSig]
    shards: list[Shard]


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


class _Mode(msgspec.Struct):
    mode: str = "complete"


class _CompleteLine(RawCompletedCall, kw_only=True, gc=False):
    """A complete call with the line's ``mode`` read in the same decode. Encoded, it is the
    call: ``mode`` holds its default and defaults are omitted."""

    mode: str = "complete"


native_struct_plan(_CompleteLine)
_COMPLETE = _CompleteLine.__struct_defaults__[-1]  # the default object itself (see _without_mode)
_MODE_DECODER = msgspec.json.Decoder(_Mode)
_COMPLETE_LINE = msgspec.json.Decoder(_CompleteLine)
_DECODERS = {
    "start": msgspec.json.Decoder(RawStartedCall),
    "end": msgspec.json.Decoder(RawEndedCall),
    "complete": _COMPLETE_LINE,
}
# a line that holds no `mode"` has no "mode" key: it is a complete call. (Searching for the
# quoted key costs 5x more: the search stops at every quote of the line.)
_MODE_KEY = b'mode"'
_BODY_LEVELS_ABOVE_A_CALL = 4
_MAX_CALL_DEPTH = MAX_JSON_DEPTH - _BODY_LEVELS_ABOVE_A_CALL


# -- planning and checkpoints -------------------------------------------------------------


def _signature(path: str) -> _FileSig:
    st = os.stat(path)
    return _FileSig(path=os.path.abspath(path), size_bytes=st.st_size, mtime_ns=st.st_mtime_ns)


def plan_shards(paths: list[str], processes: int) -> list[Shard]:
    """Compressed files whole; plain files cut into about ``processes`` ranges in total."""
    plain_bytes = sum(os.path.getsize(p) for p in paths if not _is_zst(p))
    target_bytes = max(_MIN_SHARD_BYTES, plain_bytes // max(1, processes) + 1)
    shards: list[Shard] = []
    for path in map(os.path.abspath, paths):
        if _is_zst(path):
            shards.append(Shard(path=path, start=0, end=None, done=0))
        else:
            shards.extend(_cut(path, target_bytes))
    return shards


def _cut(path: str, target_bytes: int) -> Iterator[Shard]:
    size = os.path.getsize(path)
    start = 0
    with open(path, "rb") as f:
        while start < size:
            f.seek(min(size, start + target_bytes))
            f.readline()  # move the cut to the next line boundary
            end = min(size, f.tell()) if start + target_bytes < size else size
            yield Shard(path=path, start=start, end=end, done=start)
            start = end


def load_checkpoint(path: str, paths: list[str]) -> Checkpoint | None:
    """The saved progress for exactly these files, None if there is none; a checkpoint for
    other or changed files is an error naming the file (resuming it would skip data)."""
    try:
        with open(path, "rb") as f:
            saved = msgspec.json.decode(f.read(), type=Checkpoint)
    except FileNotFoundError:
        return None
    current = [_signature(p) for p in paths]
    if saved.files != current:
        changed = next((c.path for s, c in zip(saved.files, current) if s != c), path)
        raise UsageError(f"ingest: checkpoint {path} was written for other input files ({changed} "
                         "differs); delete it to start over")
    return saved


def save_checkpoint(path: str, checkpoint: Checkpoint) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(msgspec.json.encode(checkpoint))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# -- reading ------------------------------------------------------------------------------


def _is_zst(path: str) -> bool:
    return path.endswith((".zst", ".zstd"))


def _open_at(path: str, offset: int, stack: ExitStack) -> BinaryIO:
    raw = stack.enter_context(open(path, "rb", buffering=_READ_BUFFER_BYTES))  # noqa: SIM115
    if not _is_zst(path):
        raw.seek(offset)
        return raw
    reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    stream = stack.enter_context(io.BufferedReader(reader, _READ_BUFFER_BYTES))
    skipped = 0
    while skipped < offset:  # a compressed stream cannot seek: decompress past what is done
        chunk = stream.read(min(1 << 20, offset - skipped))
        if not chunk:
            break
        skipped += len(chunk)
    return stream


def parse_line(line: bytes, guess: str = "complete") -> tuple[str, msgspec.Struct] | None:
    """(mode, item) of one line, its JSON-valued fields raw; None for a blank line;
    ValueError if it is not an item (invalid UTF-8 too: the server would refuse the whole
    batch holding it). ``guess``: the mode the line most likely has (the previous line's):
    a complete call is read in one decode; a start or an end, and a guess that was wrong,
    cost a look for the ``mode`` key first."""
    if not line or line.isspace():
        return None
    try:
        # the server's checks: a line it would refuse is an invalid line. A line's call
        # travels at most this deep in a body: {"batch": [{"req": {"start": CALL}}]}
        if json_depth_over(line, _MAX_CALL_DEPTH):
            raise ValueError(f"JSON nested more than {MAX_JSON_DEPTH} levels deep in a body")
        mode, item = _decode(line, guess)
        if not line.isascii():
            line.decode()  # msgspec checks a raw value's syntax, not its strings' encoding
        if not item.ok():
            check_call(item, "$")
        return mode, item
    except msgspec.DecodeError as exc:  # ValidationError included
        raise ValueError(str(exc)) from None


def _decode(line: bytes, guess: str) -> tuple[str, msgspec.Struct]:
    mode = None
    if guess == "complete":
        try:
            item = _COMPLETE_LINE.decode(line)
        except msgspec.ValidationError:
            mode = _mode(line)
            if mode == "complete":
                raise
        else:
            if item.mode == "complete":
                return "complete", _without_mode(item)
            mode = item.mode
    if mode is None:
        mode = _mode(line)
    decoder = _DECODERS.get(mode)
    if decoder is None:
        raise ValueError(f"mode {mode!r} is not one of start, end, complete")
    item = decoder.decode(line)
    return mode, _without_mode(item) if mode == "complete" else item


def _without_mode(item: _CompleteLine) -> _CompleteLine:
    """The call as it is sent: omit_defaults compares by identity, and a "complete" read
    from the line is another str than the default, which would be encoded."""
    item.mode = _COMPLETE
    return item


def _mode(line: bytes) -> str:
    return _MODE_DECODER.decode(line).mode if _MODE_KEY in line else "complete"


# -- the worker processes -----------------------------------------------------------------


class _Counts(msgspec.Struct):
    start: int = 0
    end: int = 0
    complete: int = 0
    invalid: int = 0


def _write(tracer: Tracer, mode: str, item: Any, project: str | None) -> None:
    if project is not None:
        item.project_id = project
    if mode == "start":  # the server would assign them: ingest does, as call_start does
        item.id = item.id or uuid7()
        item.trace_id = item.trace_id or uuid7()
    tracer.enqueue(mode, item)


def ingest_shard(tracer: Tracer, index: int, shard: Shard, project: str | None,
                 checkpoint_lines: int, out: Any) -> None:
    """Worker body: send the shard's lines; report progress, and offsets once acknowledged."""
    counts, offset, lines_since_commit, unreported, read_bytes = _Counts(), shard.done, 0, 0, 0
    mode = "complete"
    with ExitStack() as stack:
        stream = _open_at(shard.path, shard.done, stack)
        while shard.end is None or offset < shard.end:
            line = stream.readline()
            if not line:
                break
            mode = _ingest_line(tracer, line, project, counts, shard.path, offset, mode)
            offset += len(line)
            read_bytes += len(line)
            lines_since_commit += 1
            unreported += 1
            if unreported >= _PROGRESS_LINES:
                out.put(("read", index, counts, read_bytes))
                counts, unreported, read_bytes = _Counts(), 0, 0
            if lines_since_commit >= checkpoint_lines:
                _commit(tracer, index, offset, out)
                lines_since_commit = 0
    out.put(("read", index, counts, read_bytes))
    _commit(tracer, index, offset, out)
    out.put(("done", index, None, 0))


def _ingest_line(tracer: Tracer, line: bytes, project: str | None, counts: _Counts, path: str,
                 offset: int, guess: str) -> str:
    """Send one line; the mode of its item (the guess for the next line)."""
    try:
        parsed = parse_line(line, guess)
        if parsed is None:
            return guess
        mode, item = parsed
        _write(tracer, mode, item, project)  # an item too large for a request: ValueError
    except ValueError as exc:
        counts.invalid += 1
        if counts.invalid <= 3:
            log.warning("%s at byte %d: skipped an invalid line: %s", path, offset, exc)
        return guess
    setattr(counts, mode, getattr(counts, mode) + 1)
    return mode


def _commit(tracer: Tracer, index: int, offset: int, out: Any) -> None:
    if not tracer.flush(_FLUSH_TIMEOUT_S):
        raise RuntimeError(f"the server did not acknowledge shard {index} within {_FLUSH_TIMEOUT_S} s")
    out.put(("commit", index, None, offset))


def _worker(tracer: Tracer, jobs: list[tuple[int, Shard]], project: str | None,
            checkpoint_lines: int, out: Any) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        for index, shard in jobs:
            ingest_shard(tracer, index, shard, project, checkpoint_lines, out)
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


class _Progress:
    """A one-line progress bar on stderr (rate, ETA) when it is a terminal."""

    def __init__(self, total_bytes: int | None, done_bytes: int, enabled: bool) -> None:
        self.total_bytes = total_bytes
        self.done_bytes = done_bytes
        self.enabled = enabled
        self.items = 0
        self._start_s = time.monotonic()
        self._start_bytes = done_bytes
        self._shown_s = 0.0

    def add(self, items: int, read_bytes: int) -> None:
        self.items += items
        self.done_bytes += read_bytes
        now = time.monotonic()
        if self.enabled and now - self._shown_s >= 0.2:
            self._shown_s = now
            sys.stderr.write("\r" + self.line(now) + "\x1b[K")
            sys.stderr.flush()

    def line(self, now: float) -> str:
        elapsed_s = max(1e-9, now - self._start_s)
        rate = self.items / elapsed_s
        text = f"{self.items:,} items  {rate:,.0f}/s"
        if self.total_bytes:
            fraction = min(1.0, self.done_bytes / self.total_bytes)
            bar = "#" * int(fraction * 30)
            byte_rate = (self.done_bytes - self._start_bytes) / elapsed_s
            eta_s = (self.total_bytes - self.done_bytes) / byte_rate if byte_rate > 0 else 0
            text = f"[{bar:<30}] {fraction:6.1%}  {text}  ETA {int(eta_s) // 60}:{int(eta_s) % 60:02d}"
        return text

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + self.line(time.monotonic()) + "\x1b[K\n")


def _total_bytes(shards: list[Shard]) -> int | None:
    """Progress is by bytes; unknown (None) when a compressed file is among the inputs."""
    if any(s.end is None for s in shards):
        return None
    return sum(s.end - s.start for s in shards)


def default_checkpoint_path(paths: list[str]) -> str:
    return os.path.abspath(paths[0]) + ".ingest-checkpoint"


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
    checkpoint = saved or Checkpoint(files=[_signature(p) for p in paths],
                                     shards=plan_shards(paths, processes))
    summary = IngestSummary(resumed=saved is not None)
    started_s = time.monotonic()
    total = _total_bytes(checkpoint.shards)
    bar = _Progress(total, sum(s.done - s.start for s in checkpoint.shards),
                    sys.stderr.isatty() if progress is None else progress)
    config.setdefault("project", project or _PLACEHOLDER_PROJECT)
    with Engine(url=url, config_file=config_file, **config) as engine:
        _run_workers(engine, checkpoint, checkpoint_path, processes, project, checkpoint_lines,
                     summary, bar)
        _settled(summary, engine.close())
    bar.close()
    summary.elapsed_s = time.monotonic() - started_s
    os.unlink(checkpoint_path)
    return summary


def _settled(summary: IngestSummary, stats: dict[str, Any]) -> None:
    summary.acked = stats.get("items_acked", 0)
    summary.spooled = stats.get("spooled_items", 0)
    summary.dead_lettered = stats.get("dead_letters", 0)
    summary.undelivered = stats.get("undelivered", 0)


def _run_workers(engine: Engine, checkpoint: Checkpoint, checkpoint_path: str, processes: int,
                 project: str | None, checkpoint_lines: int, summary: IngestSummary,
                 bar: _Progress) -> None:
    context = multiprocessing.get_context(_start_method())
    out = context.Queue()
    workers = [context.Process(target=_worker, name=f"engine-ingest-{n}",
                               args=(engine.producer(), jobs, project, checkpoint_lines, out))
               for n, jobs in enumerate(_deal(checkpoint.shards, processes))]
    for worker in workers:
        worker.start()
    try:
        _collect(out, workers, checkpoint, checkpoint_path, summary, bar)
        for worker in workers:
            worker.join(_WORKER_EXIT_TIMEOUT_S)
    finally:
        for worker in workers:  # only on an error or a worker stuck past its last message
            if worker.is_alive():
                worker.terminate()
            worker.join()
    failed = [w.name for w in workers if w.exitcode]
    if failed:
        raise CommandFailed(f"ingest workers failed: {', '.join(failed)}; rerun the same command "
                           f"to resume from {checkpoint_path}")


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
             summary: IngestSummary, bar: _Progress) -> None:
    """Take the workers' messages until every shard is done or a worker died."""
    pending = {i for i, s in enumerate(checkpoint.shards) if s.end is None or s.done < s.end}
    while pending:
        try:
            kind, index, counts, value = out.get(timeout=0.5)
        except queue.Empty:
            if any(w.exitcode not in (None, 0) for w in workers) or not any(w.is_alive() for w in workers):
                return
            continue
        if kind == "read":
            _count(summary, counts)
            bar.add(counts.start + counts.end + counts.complete, value)
        elif kind == "commit":
            checkpoint.shards[index].done = value
            save_checkpoint(checkpoint_path, checkpoint)
        else:
            pending.discard(index)


def _count(summary: IngestSummary, counts: _Counts) -> None:
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
        "docs/configuration.md) from several producer processes; resumable.")
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
        if os.path.exists(checkpoint):
            hint = f"the same command resumes from the checkpoint {checkpoint}"
        else:
            hint = "no line was acknowledged yet: the same command starts over"
        print(f"engine ingest: stopped before the end; {hint}", file=sys.stderr)
        raise


def run(args: argparse.Namespace) -> int:
    from engine.cli import _probe  # urllib: the command's, not its workers'
    from engine.server import serve_subprocess

    _args.setup_logging(args)
    fixed = {"project": args.project or _PLACEHOLDER_PROJECT,
             **({"url": args.to} if args.to else {})}
    cfg = _args.load_settings(args, **fixed)
    checkpoint = args.checkpoint or default_checkpoint_path(args.files)
    load_checkpoint(checkpoint, args.files)  # one for other files is refused before anything starts
    with ExitStack() as stack:
        stack.enter_context(_args.sigterm_interrupts())
        stack.enter_context(_resume_hint(checkpoint))
        url = args.to or stack.enter_context(serve_subprocess())
        _probe.server_info(url, cfg.api_key)
        summary = run_ingest(
            args.files, url, processes=args.processes, project=args.project,
            checkpoint_path=checkpoint, checkpoint_lines=args.checkpoint_lines,
            progress=False if args.no_progress else None, config_file=args.config,
            **_args.config_overrides(args),
        )  # fmt: skip
    rate = summary.items / summary.elapsed_s if summary.elapsed_s else 0.0
    stats = {"items_acked": summary.acked, "spooled_items": summary.spooled,
             "dead_letters": summary.dead_lettered, "undelivered": summary.undelivered}
    line, delivered = _summary.delivery(stats, msgspec.structs.replace(cfg, url=url))
    print(f"engine ingest: read {summary.items:,} items ({summary.completes:,} complete, "
          f"{summary.starts:,} starts, {summary.ends:,} ends) in {summary.elapsed_s:.1f} s "
          f"({rate:,.0f}/s); {summary.invalid_lines:,} invalid lines skipped"
          f"{'; resumed' if summary.resumed else ''}; {line}")
    return 0 if delivered else 1
