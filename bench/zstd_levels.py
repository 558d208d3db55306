"""zstd levels and threads on the sender's own request bodies: ratio, speed, CPU per call.

    python -m bench.zstd_levels [--levels -1,1,2,3] [--threads 1,2] [--seconds 1.0]

Bodies are what the sender posts in complete mode: ``{"batch":[...]}`` of ~2 MB of spliced
eval calls (``bench.payloads``; each body holds 512 different calls). Each level compresses the same bodies with the
sender's :class:`engine.sender._transport.Compressor` (one ``ZstdCompressor`` per thread) on
1..N threads at once, as the sender's executor does with several requests in flight.

Prints per level: the compression ratio, CPU µs per call (thread CPU time, so other load on
the box inflates it less than wall time), MB/s of input per thread and for all threads
together (wall), and ratio x MB/s per thread, the figure the default level is picked by: how
many raw bytes one core moves per second, weighted by how few of them reach the wire.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from bench.sender_micro import encode_pool
from engine.sender._transport import Compressor
from engine.wire.calls import splice_complete

_BODY_CALLS = 512  # ~2 MB, the sender's initial size target


def bodies(count: int) -> list[bytes]:
    """``count`` distinct request bodies of spliced eval calls."""
    pool = encode_pool("eval")
    out = []
    for b in range(count):
        items = []
        for i in range(_BODY_CALLS):
            enc = pool[(b * _BODY_CALLS + i) % len(pool)]
            items.append(splice_complete(enc.start, enc.end, enc.end_aux))
        out.append(b'{"batch":[' + b",".join(items) + b"]}")
    return out


def _compress_for(compressor: Compressor, work: list[bytes], seconds: float,
                  result: list[tuple[int, int, float]]) -> None:
    done = raw = 0
    wire = 0
    began = time.thread_time()
    while time.thread_time() - began < seconds:
        body = work[done % len(work)]
        wire += len(compressor.compress(body))
        raw += len(body)
        done += 1
    result.append((raw, wire, time.thread_time() - began))


def measure(level: int, threads: int, work: list[bytes], seconds: float) -> dict[str, float]:
    compressor = Compressor(level)
    results: list[tuple[int, int, float]] = []
    workers = [threading.Thread(target=_compress_for, args=(compressor, work, seconds, results))
               for _ in range(threads)]
    began = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall_s = time.perf_counter() - began
    raw, wire, cpu_s = (sum(r[k] for r in results) for k in range(3))
    calls = raw / (len(work[0]) / _BODY_CALLS)
    per_thread_mb_s = raw / cpu_s / 1e6
    ratio = raw / wire
    return {"level": level, "threads": threads, "ratio": ratio,
            "cpu_us_per_call": cpu_s / calls * 1e6, "mb_per_s_per_thread": per_thread_mb_s,
            "mb_per_s_all": raw / wall_s / 1e6, "ratio_x_mb_per_s": ratio * per_thread_mb_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="-1,1,2,3")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--seconds", type=float, default=1.0, help="per level, thread count, run")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    try:
        levels = [int(v) for v in args.levels.split(",")]
        thread_counts = [int(v) for v in args.threads.split(",")]
    except ValueError:
        parser.error("--levels and --threads take comma-separated integers, e.g. -1,1,3")
    if any(n < 1 for n in thread_counts):
        parser.error(f"--threads: every count must be at least 1, got {args.threads}")
    if any(not -7 <= level <= 22 for level in levels):
        parser.error(f"--levels: zstd levels here are -7 to 22, got {args.levels}")
    if args.seconds <= 0 or args.repeat < 1:
        parser.error("--seconds must be > 0 and --repeat at least 1")
    work = bodies(8)
    print(f"zstd on {len(work)} bodies of {_BODY_CALLS} eval calls ({len(work[0]) / 1e6:.1f} MB "
          f"each); medians of {args.repeat} runs")
    print("| level | threads | ratio | CPU µs/call | MB/s per thread | MB/s all threads | "
          "ratio x MB/s per thread |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for level in levels:
        for threads in thread_counts:
            runs = [measure(level, threads, work, args.seconds) for _ in range(args.repeat)]
            row = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(f"| {level} | {threads} | {row['ratio']:.2f} | {row['cpu_us_per_call']:.2f} | "
                  f"{row['mb_per_s_per_thread']:.0f} | {row['mb_per_s_all']:.0f} | "
                  f"{row['ratio_x_mb_per_s']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
