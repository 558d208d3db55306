"""Large batches into ClickHouse are parsed by ClickHouse itself (``_calls.bulk_parts``: the
parts as msgspec re-encodes them, ``INSERT … SELECT … FROM input()``): they must read
back exactly as the SQLite store reads the same batch, for every kind of value."""

import datetime as dt

import msgspec

from engine.server._ingest_models import (
    RawBatch,
    RawCallsCompleteReq,
    RawStartBatchItem,
    decode_ingest,
)
from engine.server._sqlite_store import SQLiteStore
from engine.server._store import CallsQuery
from engine.server.clickhouse import ClickHouseStore, parse_store_url
from engine.server.clickhouse._calls import bulk_ready
from engine.server.clickhouse._store import ASYNC_INSERT_MAX_ROWS
from tests.server.harness import run_on

P = "ent/bulk"
# every kind of output (a JSON string ClickHouse would unquote, text that looks like
# JSON, numbers as written, a big integer), unicode and escapes, times in any zone and in
# years DateTime64 cannot hold
OUTPUTS = ['"plain text"', '"42"', '"{\\"a\\": 1}"', '"caf\\u00e9 / \\"q\\" \\\\ \\n"', "1.50",
           "12345678901234567890123", "-0.0", "true", "null", "[1, \"two\", {\"x\": null}]",
           '{"answer" : 42,  "nested": {"k": [1.0, 2e3]}}']  # fmt: skip
TIMES = ["2026-01-02T03:04:05.123456Z", "2026-01-02T03:04:05+05:30", "0001-01-01T00:00:00Z",
         "9999-12-31T23:59:59.999999Z", "2024-02-29T12:00:00.5-08:00", "1899-12-31T23:59:59"]  # fmt: skip


def _start(i: int) -> dict:
    return {
        "project_id": P, "id": f"c{i:04d}", "op_name": f"op{i % 3}", "trace_id": f"t{i % 7}",
        "parent_id": None if i % 5 == 0 else f"c{i - 1:04d}", "started_at": TIMES[i % len(TIMES)],
        "attributes": {"i": i, "tag": "ü"}, "display_name": None if i % 4 else f"name {i}",
        "inputs": {"text": f"input {i}", "f": 1.50, "nested": {"a": [i, None]}},
        "otel_dump": None if i % 2 else {"span": i}, "wb_run_step": i if i % 3 else None,
        "thread_id": "th" if i % 6 == 0 else None, "turn_id": f"c{i:04d}" if i % 6 == 0 else None,
    }  # fmt: skip


def _end(i: int) -> dict:
    return {
        "project_id": P, "id": f"c{i:04d}", "ended_at": TIMES[(i + 1) % len(TIMES)],
        "summary": {"usage": {"m": {"requests": i}}}, "wb_run_step_end": i if i % 2 else None,
        "exception": "boom \"quoted\"" if i % 9 == 0 else None,
    }  # fmt: skip


def _batches() -> tuple[list, list, list]:
    """Raw starts, ends and completes as the ingest routes decode them."""
    body = b'{"batch": [' + b", ".join(
        [b'{"mode": "start", "req": {"start": %s}}' % msgspec.json.encode(_start(i)) for i in range(80)]
        + [b'{"mode": "end", "req": {"end": %s}}' % _end_with_output(i) for i in range(40, 120)]
    ) + b"]}"  # fmt: skip
    parts = decode_ingest(body, RawBatch).batch
    starts = [p.req.start for p in parts if isinstance(p, RawStartBatchItem)]
    ends = [p.req.end for p in parts if not isinstance(p, RawStartBatchItem)]
    complete = b'{"batch": [' + b", ".join(
        msgspec.json.encode(_start(i))[:-1] + b", " + _end_with_output(i, ids=False)[1:]
        for i in range(200, 300)
    ) + b"]}"  # fmt: skip
    return starts, ends, decode_ingest(complete, RawCallsCompleteReq).batch


def _end_with_output(i: int, ids: bool = True) -> bytes:
    """An end's JSON with the output spliced in as written (msgspec would re-encode it)."""
    fields = _end(i) if ids else {k: v for k, v in _end(i).items() if k not in ("project_id", "id")}
    end = msgspec.json.encode(fields)
    return end[:-1] + b', "output": ' + OUTPUTS[i % len(OUTPUTS)].encode() + b"}"


async def _read_all(store) -> list[dict]:
    calls = []
    async for page in store.query_calls(CallsQuery(project_id=P)):
        for call in page:
            calls.append({k: bytes(v) if isinstance(v, msgspec.Raw) else v for k, v in call.items()})
    return sorted(calls, key=lambda c: c["id"])


def test_a_large_batch_parsed_by_clickhouse_reads_back_as_sqlite_stores_it(tmp_path, clickhouse_url):
    starts, ends, completes = _batches()
    assert len(starts) + len(ends) + len(completes) > ASYNC_INSERT_MAX_ROWS
    assert bulk_ready(starts, ends, completes)  # the path under test

    async def stored(store) -> list[dict]:
        try:
            await store.insert_calls(starts, ends, completes)
            return await _read_all(store)
        finally:
            await store.close()

    ours = run_on("asyncio", stored(ClickHouseStore(parse_store_url(clickhouse_url))))
    sqlite = run_on("asyncio", stored(SQLiteStore(tmp_path / "t.db")))
    assert len(ours) == len(sqlite) == 180  # starts 0-79 (ends 40-119: 80-119 have none), completes
    for mine, theirs in zip(ours, sqlite, strict=True):
        assert mine == theirs
    by_id = {c["id"]: c for c in ours}
    for i in range(200, 300):  # every output as sent, byte for byte
        assert by_id[f"c{i:04d}"]["output"] == OUTPUTS[i % len(OUTPUTS)].encode()
    # 2024-02-29T12:00:00.5-08:00
    assert by_id["c0202"]["started_at"] == dt.datetime(2024, 2, 29, 20, 0, 0, 500000, tzinfo=dt.timezone.utc)
    assert by_id["c0200"]["otel_dump"] == b'{"span":200}'
