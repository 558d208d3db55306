"""Throughput of the shared-memory ring against multiprocessing.Queue and faster-fifo.

Each (contender, record size, producer count) runs in a fresh interpreter: N producer
processes (fork) push identical pre-built payloads as fast as they can; the consumer in the
worker's main process receives them. Items/s and MB/s are taken at the consumer, from the
moment every producer is ready to the last item. Each producer stops after
``--count`` items or ``--seconds``, whichever comes first, then sends an end marker.

The ring's records also carry the routing header (kind, ids, project, enqueue time) the
queues do not; the queues move only the payload bytes.

    .venv/bin/python -m bench.ring [--repeat 3] [--count 200000] [--seconds 4]

Prints a markdown table (medians, min-max, ratio to the best contender) and appends
JSON lines to ``bench/results/ring.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import select
import statistics
import subprocess
import sys
import time

RECORD_SIZES_BYTES = (64, 1024, 4096)
PRODUCER_COUNTS = (1, 2)
CONTENDERS = ("ring", "mp.Queue", "faster-fifo")
RING_BYTES = 16 << 20
QUEUE_BYTES = 64 << 20
RESULTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "ring.jsonl")
_CALL_ID = bytes(range(16))
_TRACE_ID = bytes(range(16, 32))
_PROJECT = b"entity/project"


def _bounded_items(count: int, seconds: float):
    """Yield item indexes until ``count`` or ``seconds`` is reached (time checked per 1024)."""
    deadline = time.monotonic() + seconds
    for index in range(count):
        if not index & 1023 and time.monotonic() > deadline:
            return
        yield index


# ---- ring ---------------------------------------------------------------------------


def _ring_producer(spec, size_bytes, count, seconds, ready, go) -> None:
    from engine.ring import KIND_END, KIND_RAW, RingSet

    writer = RingSet.attach(spec).writer()
    payload = b"x" * size_bytes
    write = writer.write
    ready.release()
    go.wait()
    for _ in _bounded_items(count, seconds):
        write(KIND_RAW, 0, _CALL_ID, _TRACE_ID, _PROJECT, payload, 0, None)
    write(KIND_END, 0, _CALL_ID, _TRACE_ID, _PROJECT, b"", 0, None)
    writer.close()


def _run_ring(size_bytes, producers, count, seconds) -> tuple[int, int, float]:
    from engine.ring import KIND_END, RingSet

    rings = RingSet.create(RING_BYTES, producers)
    try:
        reader = rings.reader()
        start, processes = _start_producers(
            _ring_producer, (rings.spec, size_bytes, count, seconds), producers
        )
        items = payload_bytes = ends = 0
        while ends < producers:
            batch = reader.read()
            if not batch:
                _wait_for_doorbell(reader)
                continue
            for record in batch:
                if record.kind == KIND_END:
                    ends += 1
                else:
                    items += 1
                    payload_bytes += len(record.payload)
            for slot, end_pos in {r.slot: r.end_pos for r in batch}.items():
                reader.release(slot, end_pos)
        elapsed_s = time.perf_counter() - start
        _join(processes)
        reader.close()
        return items, payload_bytes, elapsed_s
    finally:
        rings.close()
        rings.unlink()


def _wait_for_doorbell(reader) -> None:
    if reader.prepare_sleep():
        select.select([reader.fileno()], [], [], 0.01)
    reader.clear_doorbell()


# ---- multiprocessing.Queue ------------------------------------------------------------


def _queue_producer(queue, size_bytes, count, seconds, ready, go) -> None:
    payload = b"x" * size_bytes
    put = queue.put
    ready.release()
    go.wait()
    for _ in _bounded_items(count, seconds):
        put(payload)
    put(None)
    queue.close()
    queue.join_thread()


def _run_mp_queue(size_bytes, producers, count, seconds) -> tuple[int, int, float]:
    queue = multiprocessing.get_context("fork").Queue(maxsize=QUEUE_BYTES // max(size_bytes, 1024))
    start, processes = _start_producers(
        _queue_producer, (queue, size_bytes, count, seconds), producers
    )
    get = queue.get
    items, payload_bytes = _count_until_ends(lambda: (get(timeout=60),), producers)
    elapsed_s = time.perf_counter() - start
    _join(processes)
    return items, payload_bytes, elapsed_s


# ---- faster-fifo -------------------------------------------------------------------------


def _fifo_producer(queue, size_bytes, count, seconds, ready, go) -> None:
    payload = b"x" * size_bytes
    put = queue.put
    ready.release()
    go.wait()
    for _ in _bounded_items(count, seconds):
        put(payload, timeout=60)
    put(None, timeout=60)


def _run_faster_fifo(size_bytes, producers, count, seconds) -> tuple[int, int, float]:
    import faster_fifo

    queue = faster_fifo.Queue(max_size_bytes=QUEUE_BYTES)
    start, processes = _start_producers(
        _fifo_producer, (queue, size_bytes, count, seconds), producers
    )
    items, payload_bytes = _count_until_ends(
        lambda: queue.get_many(timeout=60, max_messages_to_get=4096), producers)
    elapsed_s = time.perf_counter() - start
    _join(processes)
    return items, payload_bytes, elapsed_s


def _count_until_ends(get_some, producers: int) -> tuple[int, int]:
    """Items and payload bytes a queue peer delivered, until every producer sent its None."""
    items = payload_bytes = ends = 0
    while ends < producers:
        for item in get_some():
            if item is None:
                ends += 1
            else:
                items += 1
                payload_bytes += len(item)
    return items, payload_bytes


# ---- harness -----------------------------------------------------------------------------


def _start_producers(target, args, producers):
    """Start producers (fork) and release them together; returns (start time, processes)."""
    context = multiprocessing.get_context("fork")
    ready, go = context.Semaphore(0), context.Event()
    processes = [
        context.Process(target=target, args=(*args, ready, go), daemon=True)
        for _ in range(producers)
    ]
    for process in processes:
        process.start()
    for _ in processes:
        if not ready.acquire(timeout=60):
            raise RuntimeError("a producer did not start within 60 s")
    start = time.perf_counter()
    go.set()
    return start, processes


def _join(processes) -> None:
    for process in processes:
        process.join(60)
        if process.exitcode != 0:
            raise RuntimeError(f"producer exited with {process.exitcode}")


_RUNNERS = {"ring": _run_ring, "mp.Queue": _run_mp_queue, "faster-fifo": _run_faster_fifo}


def _worker(contender, size_bytes, producers, count, seconds) -> None:
    items, payload_bytes, elapsed_s = _RUNNERS[contender](size_bytes, producers, count, seconds)
    print(json.dumps({"items": items, "payload_bytes": payload_bytes, "seconds": elapsed_s}))


def _run_in_subprocess(contender, size_bytes, producers, count, seconds) -> dict:
    argv = [sys.executable, "-m", "bench.ring", "--worker", contender, str(size_bytes),
            str(producers), "--count", str(count), "--seconds", str(seconds)]  # fmt: skip
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(argv, capture_output=True, text=True, cwd=root, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"{contender} {size_bytes} B x{producers} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _environment() -> dict:
    try:
        from importlib.metadata import version

        import faster_fifo  # noqa: F401

        fifo_version = version("faster-fifo")
    except ImportError:
        fifo_version = None
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "faster_fifo": fifo_version,
    }


def _measure(args) -> list[dict]:
    rows = []
    env = _environment()
    contenders = [c for c in CONTENDERS if c != "faster-fifo" or env["faster_fifo"]]
    for size_bytes in RECORD_SIZES_BYTES:
        for producers in PRODUCER_COUNTS:
            for contender in contenders:
                runs = [
                    _run_in_subprocess(contender, size_bytes, producers, args.count, args.seconds)
                    for _ in range(args.repeat)
                ]
                rows.append(_summarize(contender, size_bytes, producers, runs, env))
                print(_progress(rows[-1]), file=sys.stderr, flush=True)
    return rows


def _summarize(contender, size_bytes, producers, runs, env) -> dict:
    rates = [r["items"] / r["seconds"] for r in runs]
    mb_rates = [r["payload_bytes"] / r["seconds"] / 1e6 for r in runs]
    return {
        "bench": "ring",
        "contender": contender,
        "record_bytes": size_bytes,
        "producers": producers,
        "runs": len(runs),
        "items_per_s": statistics.median(rates),
        "items_per_s_min": min(rates),
        "items_per_s_max": max(rates),
        "mb_per_s": statistics.median(mb_rates),
        "items": [r["items"] for r in runs],
        "unix_time": time.time(),
        **env,
    }


def _progress(row) -> str:
    return (f"{row['contender']:>12} {row['record_bytes']:>5} B x{row['producers']}: "
            f"{row['items_per_s']:,.0f} items/s {row['mb_per_s']:,.0f} MB/s")  # fmt: skip


def _table(rows) -> str:
    lines = [
        "| record | producers | contender | items/s (median, min-max) | MB/s | vs best |",
        "|---:|---:|---|---:|---:|---:|",
    ]
    for size_bytes in RECORD_SIZES_BYTES:
        for producers in PRODUCER_COUNTS:
            group = [
                r for r in rows if (r["record_bytes"], r["producers"]) == (size_bytes, producers)
            ]
            best = max(r["items_per_s"] for r in group)
            for r in sorted(group, key=lambda r: -r["items_per_s"]):
                lines.append(
                    f"| {size_bytes} B | {producers} | {r['contender']} | "
                    f"{r['items_per_s']:,.0f} ({r['items_per_s_min']:,.0f}-{r['items_per_s_max']:,.0f}) | "
                    f"{r['mb_per_s']:,.0f} | {r['items_per_s'] / best:.2f}x |"
                )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario (median)")
    parser.add_argument("--count", type=int, default=200_000, help="max items per producer")
    parser.add_argument("--seconds", type=float, default=4.0, help="max seconds per producer")
    parser.add_argument("--worker", nargs=3, metavar=("CONTENDER", "BYTES", "PRODUCERS"))
    args = parser.parse_args(argv)
    if args.worker:
        contender, size_bytes, producers = args.worker
        _worker(contender, int(size_bytes), int(producers), args.count, args.seconds)
        return
    rows = _measure(args)
    os.makedirs(os.path.dirname(RESULTS_PATH), exist_ok=True)
    with open(RESULTS_PATH, "a") as results:
        for row in rows:
            results.write(json.dumps(row) + "\n")
    env = _environment()
    print(f"\nPython {env['python']} on {env['machine']}, {env['cpus']} CPUs, "
          f"faster-fifo {env['faster_fifo']}\n")  # fmt: skip
    print(_table(rows))


if __name__ == "__main__":
    main()
