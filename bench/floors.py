"""Floors under the engine's own costs: what the same work costs done by the library that does it.

    python -m bench.floors [--calls 20000] [--repeat 3] [--payloads 1000,10000]

Issue 18 asks for targets or "a profile that shows where the remaining time goes and why it
cannot go lower". This measures, on this box, in one process, with this thread's CPU time:

- **producer**: ``tracer.call_start`` + ``call_end`` of pre-built 4 KB eval wire Structs
  into a real ring (an Engine delivering to ``engine serve --store count``) beside
  ``msgspec.json.encode`` of the same two Structs into bytes (msgspec's encoder: the JSON
  the ring holds, nothing else) and a bare copy of those bytes (``bytes(bytearray)``): the
  encoding of the call's data is the floor of putting it anywhere. The same for the calls
  as dicts with ISO-8601 text times (``call_start``/``call_end`` of dicts: the engine checks
  each field and parses the times; msgspec encodes the dicts and the text as it is). With 1,000 payloads the
  data is in the CPU's caches or close; with 10,000 (~60 MB) it is read from memory, as the
  bench's producer scenario reads it.
- **SQLite**: the rows ``engine serve`` writes for the same calls (``engine.server._rows``)
  into a fresh file with the server's schema and pragmas (``engine.server._sqlite_db``),
  ``executemany`` + ``COMMIT`` of 500-row transactions, nothing else: SQLite's own cost per
  call, which the server's ~30 µs per call (bench matrix) cannot go under; and the same into a
  table with only the ``(project_id, id)`` key an upsert needs (no index for reads).
- **zstd**: level 1 (the default) on the sender's own 2 MB request bodies of the same calls,
  one thread: what compressing costs per call, added to the sender's uncompressed cost.

Prints one JSON line per repeat and the medians (µs per call).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import msgspec
import zstandard

import engine
from bench.producer_micro import (
    _cpu_s,
    _dicts,
    _structs,
    engine_to_count_sink,
    payload_parts,
    struct_calls_us,
)
from engine.server._ingest_models import RawCallsCompleteReq, decode_ingest
from engine.server._rows import complete_row
from engine.server._sqlite_calls import _COMPLETE_SQL
from engine.server._sqlite_db import connect, migrate
from engine.wire import utcnow, uuid7

PROJECT = "bench/floors"
_ROWS_PER_TRANSACTION = 500
_BODY_BYTES = 2 << 20


def producer(eng: engine.Engine, parts: list[tuple], calls: int) -> dict[str, float]:
    """µs per call: the engine's producer, msgspec's encode of the same, a copy of its bytes."""
    out = {"engine_call_start_end": struct_calls_us(eng.producer(), _structs(parts, calls))}
    eng.flush(timeout_s=120)
    encode = msgspec.json.Encoder().encode
    items = _structs(parts, calls)
    began = _cpu_s()
    for start, end in items:
        encode(start)
        encode(end)
    out["msgspec_encode"] = (_cpu_s() - began) / calls * 1e6
    encoded = [bytearray(encode(start) + encode(end)) for start, end in items[: len(parts)]]
    began = _cpu_s()
    for i in range(calls):
        bytes(encoded[i % len(encoded)])
    out["copy_encoded_bytes"] = (_cpu_s() - began) / calls * 1e6
    dicts = _dicts(parts, calls)
    out["engine_dicts_iso"] = struct_calls_us(eng.producer(), dicts)
    eng.flush(timeout_s=120)
    began = _cpu_s()
    for start, end in dicts:  # the same dicts, times left as the text they hold
        encode(start)
        encode(end)
    out["msgspec_encode_dicts"] = (_cpu_s() - began) / calls * 1e6
    return out


def _complete_items(parts: list[tuple], calls: int) -> list[bytes]:
    """Each call as the JSON of a complete call (what the sender splices)."""
    encode = msgspec.json.Encoder().encode
    items = []
    for i in range(calls):
        inputs, output, summary, attributes = parts[i % len(parts)]
        now = utcnow()
        items.append(encode({"project_id": PROJECT, "id": uuid7(), "trace_id": uuid7(),
                             "op_name": "op", "started_at": now, "attributes": attributes,
                             "inputs": inputs, "ended_at": now, "output": output,
                             "summary": summary}))
    return items


def sqlite(items: list[bytes], folder: Path) -> dict[str, float]:
    """µs per call: building the server's rows, and SQLite's executemany + COMMIT alone."""
    bodies = [b'{"batch":[' + b",".join(items[i:i + _ROWS_PER_TRANSACTION]) + b"]}"
              for i in range(0, len(items), _ROWS_PER_TRANSACTION)]
    began = _cpu_s()
    batches = [[complete_row(c) for c in decode_ingest(body, RawCallsCompleteReq).batch]
               for body in bodies]
    rows_us = (_cpu_s() - began) / len(items) * 1e6
    out = {"decode_and_build_rows": rows_us}
    for key, indexes in (("sqlite_insert_commit", True), ("sqlite_no_read_indexes", False)):
        conn = connect(folder / f"{key}.db")
        migrate(conn)
        if not indexes:  # only the (project_id, id) key every upsert needs
            for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                                        "AND tbl_name = 'calls' AND sql IS NOT NULL").fetchall():
                conn.execute(f"DROP INDEX {name}")
        began = _cpu_s()
        for rows in batches:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_COMPLETE_SQL, rows)
            conn.execute("COMMIT")
        out[key] = (_cpu_s() - began) / len(items) * 1e6
        conn.close()
    return out


def zstd(items: list[bytes]) -> dict[str, float]:
    """µs per call of level 1 on ~2 MB bodies of these calls, one thread."""
    bodies, body, count = [], [], 0
    for item in items:
        body.append(item)
        count += len(item)
        if count >= _BODY_BYTES:
            bodies.append(b'{"batch":[' + b",".join(body) + b"]}")
            body, count = [], 0
    calls = len(items) - len(body)  # the calls of the bodies made (the rest is left over)
    compressor = zstandard.ZstdCompressor(level=1)
    began = _cpu_s()
    raw = wire = 0
    for data in bodies:
        raw += len(data)
        wire += len(compressor.compress(data))
    return {"zstd_level1": (_cpu_s() - began) / calls * 1e6, "zstd_ratio": raw / wire}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--payloads", default="1000,10000")
    args = parser.parse_args()
    pools = [int(n) for n in args.payloads.split(",")]
    parts = payload_parts("eval", max(pools))
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp, engine_to_count_sink(PROJECT) as eng:
        producer(eng, parts[:1000], 2000)  # warm-up: slot claimed, caches and allocator primed
        for repeat in range(args.repeat):
            run: dict[str, float] = {}
            for pool in pools:
                for key, value in producer(eng, parts[:pool], args.calls).items():
                    run[f"{key}_{pool}"] = value
            items = _complete_items(parts[:1000], args.calls)
            folder = Path(tmp) / f"sqlite-{repeat}"
            folder.mkdir()
            run.update(sqlite(items, folder))
            run.update(zstd(items))
            runs.append(run)
            print(json.dumps({k: round(v, 2) for k, v in run.items()}), flush=True)
    medians = {key: round(statistics.median(r[key] for r in runs), 2) for key in runs[0]}
    print(json.dumps({"median": medians}), flush=True)


if __name__ == "__main__":
    main()
