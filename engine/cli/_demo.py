"""``engine demo``: the main job on the embedded default.

Starts the local trace server (``engine serve``) on a free loopback port, runs an eval-like
workload in several producer processes through one :class:`Engine`, shows live progress,
and ends with a report: calls/s, bytes on the wire, splits, retries — and a check that
every call the workload made is stored on the server exactly once.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from typing import Any

from engine.cli import _args
from engine.cli._args import CommandFailed
from engine.common._http import urllib_opener
from engine.producer._engine import Engine
from engine.producer._tracer import Tracer

PROJECT = "demo/eval"
_DEAD_LETTERS = "dead_letters.jsonl"  # beside the SQLite file
_EXIT_INTERRUPTED = 130  # a worker stopped by Ctrl-C, as the command's own exit
_STOP_WORKERS_S = 5.0
_MODELS = ("gpt-4o-mini", "claude-3-5-haiku")
_QUESTION = ("Summarise the following support ticket in one sentence and classify its urgency. "
             "Ticket #{i}: the customer reports that exports stall at 87% when the dataset has "
             "more than {n} rows; retrying does not help and the log shows a timeout. ")


def _example(i: int) -> dict[str, Any]:
    return {"id": i, "question": _QUESTION.format(i=i, n=1000 + i) * 4,
            "expected": "urgent" if i % 3 == 0 else "normal"}


def _predict(tracer: Tracer, example: dict[str, Any]) -> str:
    model = _MODELS[example["id"] % 2]
    messages = [{"role": "system", "content": "You are a careful support triage assistant."},
                {"role": "user", "content": example["question"]}]
    with tracer.call("openai.chat.completions.create",
                     inputs={"model": model, "messages": messages, "temperature": 0.0}) as call:
        answer = ("Exports stall near completion on large datasets due to a timeout; "
                  + ("urgent" if example["id"] % 3 == 0 else "normal")) * 3
        call.output = {"choices": [{"message": {"role": "assistant", "content": answer}}]}
        call.summary = {"usage": {model: {"prompt_tokens": 412, "completion_tokens": 61,
                                          "total_tokens": 473, "requests": 1}}}
    return answer


def _score(tracer: Tracer, example: dict[str, Any], answer: str) -> dict[str, Any]:
    with tracer.call("exact_match_scorer", inputs={"expected": example["expected"],
                                                   "output": answer[-40:]}) as call:
        call.output = {"correct": answer.endswith(example["expected"]), "score": 1.0}
    return call.output


def run_worker(tracer: Tracer, worker: int, examples: int) -> int:
    """One producer process: ``examples`` evaluated examples, three traced calls each."""
    calls = 0
    for i in range(worker * examples, (worker + 1) * examples):
        example = _example(i)
        with tracer.call("Evaluation.predict_and_score", inputs={"example": example}) as root:
            answer = _predict(tracer, example)
            root.output = {"scores": _score(tracer, example, answer)}
        calls += 3
    return calls


def _worker_main(tracer: Tracer, worker: int, examples: int) -> None:
    try:
        run_worker(tracer, worker, examples)
    except KeyboardInterrupt:  # Ctrl-C reaches every process of the group: the demo says it once
        # and the demo's own SIGINT to workers still running may follow: it must not land in
        # multiprocessing's exit (a second KeyboardInterrupt there printed its traceback)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sys.exit(_EXIT_INTERRUPTED)


def _stop_workers(workers: list) -> None:
    """Stop the workers still running (the demo was interrupted): SIGINT, as a Ctrl-C at the
    terminal sends them; killed if they do not end within ``_STOP_WORKERS_S``."""
    for p in workers:
        if p.is_alive():
            os.kill(p.pid, signal.SIGINT)
    for p in workers:
        p.join(_STOP_WORKERS_S)
        if p.is_alive():
            p.kill()
            p.join()


def _post_json(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    # its own local server: never through a proxy (engine.common._http)
    with urllib_opener(url).open(request, timeout=60) as response:
        return json.loads(response.read())


def _progress_line(stats: dict[str, Any], expected: int, started: float) -> str:
    acked = stats["items_acked"]
    elapsed = max(time.monotonic() - started, 1e-9)
    return (f"\r  enqueued {stats['ring']['records_written'] // 2:>8,} / {expected:,} calls"
            f"   acknowledged {acked:>8,}   {acked / elapsed:>8,.0f} calls/s"
            f"   in flight {stats['in_flight_requests']}/{stats['concurrency_limit']}"
            f"   batch target {stats['size_target_bytes'] / 1e6:.1f} MB ")


def _watch(eng: Engine, workers: list, expected: int, started: float, tty: bool) -> None:
    while any(p.is_alive() for p in workers):
        if tty:
            sys.stdout.write(_progress_line(eng.stats(), expected, started))
            sys.stdout.flush()
        time.sleep(0.25)


def add(subparsers: argparse._SubParsersAction) -> None:
    demo = _args.add_command(
        subparsers, "demo", "run an eval workload through the engine into the local trace server",
        "Start the local trace server, trace an eval-like workload from several processes "
        "through the engine, and verify every call was stored.")
    demo.add_argument("--processes", type=_args.positive_int, default=2,
                      help="producer processes (default 2)")
    demo.add_argument("--examples", type=_args.positive_int, default=5000,
                      help="eval examples per process, 3 traced calls each (default 5000)")
    demo.add_argument("--db", default=None,
                      help="SQLite file, kept (default: a fresh temporary one, removed at the "
                      "end unless it holds calls not delivered)")
    demo.add_argument("--compression", choices=("auto", "zstd", "none"), default="auto",
                      help="request bodies: auto (the default: zstd toward a server on "
                      "another machine, plain toward one on this machine), zstd, none")
    demo.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with _args.sigterm_interrupts():  # `timeout`, a scheduler: stops as Ctrl-C does
        return run_demo(args.processes, args.examples, args.db, args.compression)


def run_demo(processes: int = 2, examples: int = 5000, db_path: str | None = None,
             compression: str = "auto") -> int:
    temp_dir = None if db_path else tempfile.mkdtemp(prefix="engine-demo-")
    try:
        return _run_demo(processes, examples, db_path or os.path.join(temp_dir, "traces.db"),
                         compression, temporary=temp_dir is not None)
    finally:
        if temp_dir is not None:
            _remove_unless_needed(temp_dir)


def _run_demo(processes: int, examples: int, db_path: str, compression: str,
              temporary: bool) -> int:
    from engine.server import spawn_server, stop_server

    expected = processes * examples * 3
    tty = sys.stdout.isatty()
    print(f"engine demo: {processes} producer processes x {examples:,} eval examples "
          f"(3 traced calls each) -> local trace server, SQLite at {db_path}"
          f"{' (temporary)' if temporary else ''}", flush=True)
    try:
        server, url = spawn_server(db_path)
    except RuntimeError as exc:  # the server's own error is on stderr already
        raise CommandFailed(f"demo: the local trace server did not start: {exc}") from None
    try:
        print(f"  local trace server listening on {url}", flush=True)
        state_dir = os.path.dirname(db_path)
        started = time.monotonic()
        with Engine(url=url, project=PROJECT, compression=compression,
                    dead_letter_path=os.path.join(state_dir, _DEAD_LETTERS)) as eng:
            tracer = eng.producer()
            ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
            workers = [ctx.Process(target=_worker_main, args=(tracer, w, examples))
                       for w in range(processes)]
            for p in workers:
                p.start()
            try:
                _watch(eng, workers, expected, started, tty)
            except BaseException:
                _stop_workers(workers)
                raise
            enqueued_s = time.monotonic() - started
            delivered = eng.flush(timeout_s=600)
            elapsed = time.monotonic() - started
            stats = eng.stats()
        if tty:
            print(_progress_line(stats, expected, started))
        failed = [p.exitcode for p in workers if p.exitcode != 0]
        stored = _post_json(url + "/calls/query_stats", {"project_id": PROJECT})["count"]
    finally:  # the server outlives the engine's close: what the rings held is delivered
        stop_server(server)
    return _report(stats, expected, stored, elapsed, enqueued_s, delivered and not failed,
                   compression)


def _remove_unless_needed(temp_dir: str) -> None:
    """The temporary folder goes, unless calls not delivered were written to it."""
    dead = os.path.join(temp_dir, _DEAD_LETTERS)
    if os.path.exists(dead) and os.path.getsize(dead) > 0:
        print(f"engine demo: kept {temp_dir}: calls not delivered are in {dead} (`engine "
              f"serve --db {os.path.join(temp_dir, 'traces.db')}`, then `engine replay "
              f"--dead-letters {dead} --to URL`, stores them)", file=sys.stderr)
        return
    shutil.rmtree(temp_dir, ignore_errors=True)


def _report(stats: dict[str, Any], expected: int, stored: int, elapsed_s: float,
            enqueued_s: float, delivered: bool, compression: str = "auto") -> int:
    raw, wire = stats["bytes_sent_raw"], stats["bytes_sent_wire"]
    saved = 100 * (1 - wire / raw) if raw else 0.0
    print(f"\n  {expected:,} calls traced in {enqueued_s:.1f} s "
          f"({expected / enqueued_s:,.0f} calls/s enqueued across the producers)")
    print(f"  all acknowledged after {elapsed_s:.1f} s: {expected / elapsed_s:,.0f} calls/s end to end")
    if stats["compressing"]:
        print(f"  {stats['batches_acked']:,} batches, {raw / 1e6:,.1f} MB of JSON sent as "
              f"{wire / 1e6:,.1f} MB on the wire ({saved:.0f}% saved by zstd)")
    else:
        why = ("the server runs on this machine; --compression zstd compresses anyway"
               if compression == "auto" else f"--compression {compression}")
        print(f"  {stats['batches_acked']:,} batches, {raw / 1e6:,.1f} MB of JSON sent "
              f"uncompressed ({why})")
    print(f"  splits on 413: {stats['splits_413']}, retries: {stats['retries']}, "
          f"dead letters: {stats['dead_letters']}, latency p50/p99: "
          f"{stats['latency_p50_us'] / 1000:.0f}/{stats['latency_p99_us'] / 1000:.0f} ms")
    ok = delivered and stored == expected
    verdict = "OK" if ok else "MISMATCH"
    print(f"  stored on the server: {stored:,} of {expected:,} calls  [{verdict}]")
    return 0 if ok else 1
