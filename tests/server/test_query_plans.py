"""Every filter and sort the call query builder emits is served by an index (EXPLAIN QUERY PLAN).

A stream reads one statement to its end, so what matters is that no query scans the whole
table and that the orders a stream is asked for most come straight out of an index, with
no sort step before the first row. Columns most calls leave NULL have partial indexes:
filtering on them seeks, sorting on them is one sort per stream (pinned below).
"""

import asyncio
import sqlite3

import pytest

from engine.server._calls_sql import Selection
from engine.server._sqlite_db import _CALLS_MIGRATIONS, Database
from engine.server._store import CallsQuery
from engine.wire.query import CallsFilter, SortBy

# wire filter -> the index it must seek
_FILTER_INDEX = {
    "call_ids": "sqlite_autoindex_calls_1", "trace_ids": "calls_trace",
    "parent_ids": "calls_by_parent_id", "thread_ids": "calls_by_thread_id",
    "turn_ids": "calls_by_turn_id", "wb_user_ids": "calls_by_wb_user_id",
    "wb_run_ids": "calls_by_wb_run_id",
}  # fmt: skip
# columns most calls leave NULL: partial indexes, so a sort on them is one sort per stream
_SPARSE_COLUMNS = frozenset({
    "display_name", "thread_id", "turn_id", "wb_user_id", "wb_run_id", "wb_run_step",
    "wb_run_step_end", "exception",
})  # fmt: skip
# wire sort field -> column
_SORT_COLUMN = {
    "id": "id", "trace_id": "trace_id", "started_at": "started_at_us",
    "ended_at": "ended_at_us", "op_name": "op_name", "parent_id": "parent_id",
    "display_name": "display_name", "thread_id": "thread_id", "turn_id": "turn_id",
    "wb_user_id": "wb_user_id", "wb_run_id": "wb_run_id", "wb_run_step": "wb_run_step",
    "wb_run_step_end": "wb_run_step_end", "exception": "exception",
}  # fmt: skip


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    db = Database(tmp_path_factory.mktemp("plans") / "traces.db")
    conn = db._rconn  # a fresh file: the plans the planner picks before any ANALYZE

    def explain(selection: Selection) -> list[str]:
        sql, params = selection.select(None, 0)
        return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]

    explain.conn = conn
    yield explain
    asyncio.run(db.close())


def _selection(flt: CallsFilter | None = None, sort_by: list[SortBy] | None = None) -> Selection:
    return Selection(CallsQuery(project_id="e/p", filter=flt, sort_by=tuple(sort_by or ())))


def _no_table_scan(steps: list[str]) -> bool:
    return not any(step.startswith("SCAN calls") for step in steps)


def test_default_order_streams_from_the_start_time_index(plan):
    assert plan(_selection()) == ["SEARCH calls USING INDEX calls_by_started_at_us (project_id=?)"]


@pytest.mark.parametrize("name", sorted(_FILTER_INDEX))
def test_every_id_filter_seeks_its_own_index(plan, name):
    steps = plan(_selection(CallsFilter(**{name: ["a", "b"]})))
    assert steps[0].startswith(f"SEARCH calls USING INDEX {_FILTER_INDEX[name]} (project_id=? AND ")
    assert _no_table_scan(steps)


@pytest.mark.parametrize("op_names", [["a"], ["a", "b"], ["a:*"], ["a", "b:*"]])
def test_op_name_filters_read_through_an_index(plan, op_names):
    steps = plan(_selection(CallsFilter(op_names=op_names)))
    assert steps[0].startswith("SEARCH calls USING INDEX") and _no_table_scan(steps)


@pytest.mark.parametrize("direction", ["asc", "desc"])
def test_root_calls_by_start_time_stream_from_the_parent_index_without_a_sort(plan, direction):
    # what every trace view asks for first: the roots, newest first
    steps = plan(_selection(CallsFilter(trace_roots_only=True),
                            [SortBy(field="started_at", direction=direction)]))  # fmt: skip
    assert steps == ["SEARCH calls USING INDEX calls_by_parent_id (project_id=? AND parent_id=?)"]
    assert plan(_selection(CallsFilter(trace_roots_only=True))) == steps  # the default order


def test_the_status_filter_of_errors_reads_the_exception_index(plan):
    errors = {"$expr": {"$eq": [{"$getField": "summary.weave.status"}, {"$literal": "error"}]}}
    sql, params = Selection(CallsQuery(project_id="e/p", query=errors)).count()
    steps = [row[3] for row in plan.conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
    assert steps == ["SEARCH calls USING INDEX calls_by_exception (project_id=? AND exception>?)"]


def test_counting_the_roots_reads_only_the_parent_index(plan):
    sql, params = _selection(CallsFilter(trace_roots_only=True)).count()
    steps = [row[3] for row in plan.conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
    assert steps == ["SEARCH calls USING INDEX calls_by_parent_id (project_id=? AND parent_id=?)"]
    # the index holds only started calls, so no row is read to check ``op_name IS NOT NULL``
    # (SQLite's seek to the row stays deferred: no column is ever loaded)
    opcodes = [row[1] for row in plan.conn.execute("EXPLAIN " + sql, params)]
    assert "DeferredSeek" in opcodes and "Column" not in opcodes, opcodes


@pytest.mark.parametrize("direction", ["asc", "desc"])
@pytest.mark.parametrize("field", sorted(_SORT_COLUMN))
def test_every_sort_field_is_served_by_an_index(plan, field, direction):
    steps = plan(_selection(None, [SortBy(field=field, direction=direction)]))
    assert steps[0].startswith("SEARCH calls USING INDEX") and _no_table_scan(steps)
    column = _SORT_COLUMN[field]
    if column in _SPARSE_COLUMNS:
        assert steps[1:] == ["USE TEMP B-TREE FOR ORDER BY"]  # one sort, then one cursor
    else:
        assert len(steps) == 1, steps  # rows come out of the index in order: no sort step


def test_filter_plus_sort_uses_the_filter_index_and_sorts_only_its_rows(plan):
    selection = _selection(CallsFilter(parent_ids=["p"]),
                           [SortBy(field="started_at", direction="desc")])  # fmt: skip
    assert plan(selection) == [
        "SEARCH calls USING INDEX calls_by_parent_id (project_id=? AND parent_id=?)",
        "LIST SUBQUERY 1", "SCAN json_each VIRTUAL TABLE INDEX 1:",
        "USE TEMP B-TREE FOR ORDER BY",
    ]  # fmt: skip


def test_a_file_from_an_older_server_gets_the_indexes_and_keeps_real_statistics(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(_CALLS_MIGRATIONS[0] + ";CREATE TABLE schema_versions "
                       "(component TEXT PRIMARY KEY, version INTEGER);"
                       "INSERT INTO schema_versions VALUES ('calls', 1);")  # fmt: skip
    conn.execute("ANALYZE")  # an operator's own statistics (an empty table: none for calls)
    conn.execute("INSERT INTO sqlite_stat1 VALUES ('calls', 'calls_trace', '7 7 1')")
    conn.commit()
    conn.close()
    db = Database(path)
    try:
        names = {row[0] for row in db._rconn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        stats = dict(db._rconn.execute("SELECT idx, stat FROM sqlite_stat1 WHERE tbl = 'calls'"))
    finally:
        asyncio.run(db.close())
    assert {"calls_by_started_at_us", "calls_by_parent_id", "calls_by_thread_id"} <= names
    assert stats["calls_trace"] == "7 7 1"  # kept
    assert stats["calls_by_started_at_us"] == "1000000 100000 1"  # assumed until ANALYZE


def test_a_file_with_the_two_column_parent_index_gets_the_one_ending_with_start_time(tmp_path):
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path)
    conn.executescript(";".join(_CALLS_MIGRATIONS[:2]) + ";CREATE TABLE schema_versions "
                       "(component TEXT PRIMARY KEY, version INTEGER);"
                       "INSERT INTO schema_versions VALUES ('calls', 2);")  # fmt: skip
    conn.execute("ANALYZE")
    conn.execute("INSERT INTO sqlite_stat1 VALUES ('calls', 'calls_by_parent_id', '9 9 9')")
    conn.commit()
    conn.close()
    db = Database(path)
    try:
        (sql,) = db._rconn.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'calls_by_parent_id'").fetchone()
        stats = dict(db._rconn.execute("SELECT idx, stat FROM sqlite_stat1 WHERE tbl = 'calls'"))
    finally:
        asyncio.run(db.close())
    assert "(project_id, parent_id, started_at_us)" in sql and "WHERE op_name IS NOT NULL" in sql
    assert stats["calls_by_parent_id"] == "1000000 100000 5 1"  # the old index's went with it


def test_upgrading_a_file_says_so_before_the_indexes_are_built(tmp_path, caplog):
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path)
    conn.executescript(";".join(_CALLS_MIGRATIONS[:2]) + ";CREATE TABLE schema_versions "
                       "(component TEXT PRIMARY KEY, version INTEGER);"
                       "INSERT INTO schema_versions VALUES ('calls', 2);")  # fmt: skip
    conn.close()
    with caplog.at_level("WARNING", logger="engine.server"):
        asyncio.run(Database(path).close())
        assert [r.getMessage() for r in caplog.records] == [
            f"engine serve: upgrading the database's calls tables from version 2 to "
            f"{len(_CALLS_MIGRATIONS)} (indexes are built over the rows it holds: about a second "
            "per million calls)"]
        caplog.clear()
        asyncio.run(Database(path).close())  # up to date: nothing said
        assert caplog.records == []


@pytest.mark.parametrize("op_names", [["weave:///e/p/op/evaluate:*"], ["a"], ["a", "b:*"]])
def test_a_rare_op_is_read_through_the_op_index_and_a_frequent_one_in_order(plan, op_names):
    """The store counts the op filter's matches first (up to FEW_OP_ROWS + 1): a rare op
    (weave's Evaluation.evaluate among 200k calls: a page 127–284 → 0.7–2.6 ms) seeks the op
    index and sorts its few calls; a frequent one streams in start order and stops at the
    page's end (its `name:*` page through the op index: 2 → 67–94 ms)."""
    from engine.server._calls_sql import FEW_OP_ROWS

    newest = [SortBy(field="started_at", direction="desc")]
    query = CallsQuery(project_id="e/p", filter=CallsFilter(op_names=op_names), sort_by=tuple(newest))
    few = plan(Selection(query, op_rows=3))
    many = plan(Selection(query, op_rows=FEW_OP_ROWS + 1))
    assert any("USING INDEX calls_by_op_name" in step for step in few), few
    assert many[0] == "SEARCH calls USING INDEX calls_by_started_at_us (project_id=?)", many
    assert _no_table_scan(few) and _no_table_scan(many)
    count_sql = Selection(query).op_rows_sql("e/p")
    counted = [row[3] for row in plan.conn.execute("EXPLAIN QUERY PLAN " + count_sql.text, count_sql.params)]
    assert all("calls_by_started_at_us" not in step for step in counted), counted


def test_a_feedback_query_pinned_to_refs_reads_through_the_feedback_index(plan):
    """A call's feedback, and a page of calls' (``include_feedback``), seek the
    ``feedback_by_ref`` index instead of decoding every document of the project."""
    from engine.server._sqlite_docs import q_query_docs
    from engine.server._store import DocsQuery

    seen: list[str] = []
    plan.conn.set_trace_callback(seen.append)
    try:
        for op, refs in (("$eq", {"$literal": "weave:///e/p/call/x"}),
                         ("$in", [{"$literal": "weave:///e/p/call/x"}, {"$literal": "weave:///e/p/call/y"}])):
            q_query_docs(plan.conn, "feedback", DocsQuery(
                project_id="e/p", query={"$expr": {op: [{"$getField": "weave_ref"}, refs]}}))
    finally:
        plan.conn.set_trace_callback(None)
    statements = [s for s in seen if "FROM feedback" in s]
    assert len(statements) == 2
    for statement in statements:
        details = [row[3] for row in plan.conn.execute("EXPLAIN QUERY PLAN " + statement)]
        assert any("feedback_by_ref" in d for d in details), details
