"""``engine serve --store chdb:///FOLDER``: ClickHouse embedded in the server process, end
to end through HTTP: small writes and bulk batches (parsed by chDB from a private spool
file), queries, edits, and everything still there after a restart on the same folder."""

import concurrent.futures
import stat

import pytest

from engine.server import serve_subprocess
from tests.server.harness import PROJECT, complete, end, start, upsert_batch
from tests.server.test_clickhouse_replicas import _get_json, _json, _post, _stream

pytestmark = pytest.mark.integration


def test_serve_on_embedded_chdb_end_to_end_and_after_a_restart(tmp_path):
    folder = tmp_path / "ch"
    store = f"chdb://{folder}"
    ids = [f"c{i:03d}" for i in range(150)]  # more than 64 parts: the bulk path
    with serve_subprocess(store=store) as url:
        _post(url, "/call/upsert_batch", upsert_batch(
            *(("start", start(i, t_s=n, parent_id=None if n % 10 == 0 else ids[n - 1]))
              for n, i in enumerate(ids)),
            *(("end", end(i, t_s=n + 1)) for n, i in enumerate(ids[:100])),
        ))  # fmt: skip
        _post(url, "/call/start", {"start": start("single", t_s=500)})  # a small write
        _post(url, "/v2/ent/proj/calls/complete", {"batch": [complete("done", t_s=600)]})
        _post(url, "/call/update", {"project_id": PROJECT, "call_id": "c001", "display_name": "one"})
        assert _json(url, "/calls/delete", {"project_id": PROJECT, "call_ids": ["c149"]}) == {"num_deleted": 1}

        calls = _stream(url)
        assert [c["id"] for c in calls] == [*ids[:149], "single", "done"]
        assert calls[1]["display_name"] == "one" and calls[1]["output"] == {"answer": "a-c001"}
        assert calls[121]["ended_at"] is None and calls[121]["parent_id"] == "c120"
        stats = {"project_id": PROJECT, "filter": {"trace_roots_only": True}}
        assert _json(url, "/calls/query_stats", stats)["count"] == 15 + 2  # c000, c010 … c140
        query = {"$expr": {"$gt": [{"$getField": "summary.weave.latency_ms"}, {"$literal": 0}]}}
        assert len(_stream(url, query=query)) == 100 + 1  # the ended ones
        # the trace browser's projects page: every visible call (not the deleted c149), and
        # the project's retention, kept across the restart below
        _json(url, "/project/ttl_settings/update", {"project_id": PROJECT, "retention_days": 36500})
        assert _get_json(url, "/ui/projects") == {"projects": [
            {"project_id": PROJECT, "calls": 151, "retention_days": 36500}]}

    assert stat.S_IMODE((folder / "insert-spool").stat().st_mode) == 0o700
    with serve_subprocess(store=store) as url:  # the same folder, a new process
        assert len(_stream(url)) == 151
        assert _get_json(url, "/ui/projects")["projects"] == [
            {"project_id": PROJECT, "calls": 151, "retention_days": 36500}]
        assert _json(url, "/call/read", {"project_id": PROJECT, "id": "c001"})["call"]["display_name"] == "one"


def test_reads_while_streams_of_many_pages_are_open_on_embedded_chdb(tmp_path):
    """A chDB connection streaming a result runs nothing else until the stream closes: a
    stream of several pages must not hold the connection other statements use (each
    store thread's), or a read landing on that thread between two pages failed with 500
    ("is streaming a query result on this thread")."""
    ids = [f"c{i:04d}" for i in range(2500)]  # three pages of PAGE_ROWS calls each
    with serve_subprocess(store=f"chdb://{tmp_path / 'ch'}") as url:
        _post(url, "/v2/ent/proj/calls/complete",
              {"batch": [complete(i, t_s=n) for n, i in enumerate(ids)]})  # fmt: skip

        def read(n: int) -> object:
            if n % 4 == 0:  # a stream of three pages, or by start time with a limit
                return [c["id"] for c in _stream(url, sort_by=[{"field": "started_at", "direction": "desc"}],
                                                 limit=2000 if n % 8 else None)]  # fmt: skip
            return _json(url, "/call/read", {"project_id": PROJECT, "id": ids[n]})["call"]["id"]

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(read, range(96)))
    for n, answer in enumerate(answers):
        if n % 4:
            assert answer == ids[n]
        else:
            assert answer == ids[::-1][: 2000 if n % 8 else None]
