"""The :class:`~engine.server._store.Store` contract, run against every store.

A new store (ClickHouse, issue 21) adds its factory to ``STORES`` and must pass as is.
"""

import datetime as dt

import msgspec
import pytest

from engine.server._count_store import CountStore
from engine.server._sqlite_store import SQLiteStore
from engine.server._store import CallsQuery, Doc, DocsQuery, ObjectsQuery, ObjectVersion
from engine.wire.calls import (
    CompletedCallSchemaForInsert,
    EndedCallSchemaForInsert,
    StartedCallSchemaForInsert,
)
from engine.wire.query import CallsFilter, SortBy
from tests.server.harness import run_on

P = "ent/proj"
T0 = dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)
STORES = {"sqlite": lambda tmp_path: SQLiteStore(tmp_path / "t.db")}


@pytest.fixture(params=sorted(STORES))
def store_run(request, tmp_path):
    """``store_run(fn)`` runs ``await fn(store)`` on a fresh store, closed afterwards."""

    def run(fn):
        async def go():
            store = STORES[request.param](tmp_path)
            try:
                return await fn(store)
            finally:
                await store.close()

        return run_on("asyncio", go())

    return run


def _call(call_id, parent=None, t_s=0, **extra):
    return CompletedCallSchemaForInsert(
        project_id=P, id=call_id, op_name="op", trace_id="t", parent_id=parent,
        started_at=T0 + dt.timedelta(seconds=t_s), ended_at=T0 + dt.timedelta(seconds=t_s + 1),
        attributes={}, inputs={"n": t_s}, summary={}, **extra,
    )  # fmt: skip


async def _ids(store, **query):
    return [c["id"] async for page in store.query_calls(CallsQuery(project_id=P, **query))
            for c in page]  # fmt: skip


def test_calls_upsert_query_sort_page_and_delete_subtrees(store_run):
    async def scenario(store):
        tree = [_call("r", t_s=0), _call("a", "r", 1), _call("b", "a", 2), _call("z", t_s=3)]
        await store.insert_calls([], [], tree)
        await store.insert_calls([], [], tree[:1])  # a retried batch adds nothing
        desc = (SortBy(field="started_at", direction="desc"),)
        got = {
            "all": await _ids(store),
            "desc_page": await _ids(store, sort_by=desc, offset=1, limit=2),
            "roots": await _ids(store, filter=CallsFilter(trace_roots_only=True)),
            "count": await store.count_calls(CallsQuery(project_id=P, limit=3)),
        }
        got["deleted"] = sorted(await store.delete_calls(P, ["a"]))
        got["left"] = await _ids(store)
        got["renamed"] = await store.set_call_display_name(P, "r", "root")
        got["renamed_gone"] = await store.set_call_display_name(P, "b", "x")
        return got

    assert store_run(scenario) == {
        "all": ["r", "a", "b", "z"], "desc_page": ["b", "a"], "roots": ["r", "z"], "count": 3,
        "deleted": ["a", "b"], "left": ["r", "z"], "renamed": True, "renamed_gone": False,
    }  # fmt: skip


def test_project_call_counts_list_every_project_with_started_calls(store_run):
    """The trace browser's first page: started calls per project, by project id; a call with
    only its end is not one yet, a deleted one no longer, a renamed or ended one still one."""

    async def scenario(store):
        other = "ent/other"
        await store.insert_calls([], [], [_call("r"), _call("a", "r", 1), _call("z", t_s=2)])
        started = StartedCallSchemaForInsert(project_id=other, id="s", op_name="op", trace_id="t",
                                             started_at=T0, attributes={}, inputs={})  # fmt: skip
        await store.insert_calls([started], [], [])
        await store.insert_calls([], [EndedCallSchemaForInsert(project_id=other, id="e", ended_at=T0,
                                                                summary={})], [])  # fmt: skip
        before = await store.project_call_counts()
        await store.delete_calls(P, ["z"])
        await store.set_call_display_name(P, "r", "root")
        await store.insert_calls([], [EndedCallSchemaForInsert(project_id=other, id="s", ended_at=T0,
                                                                summary={})], [])  # fmt: skip
        await store.insert_calls([], [], [_call("r")])  # a resent call is not a second one
        return before, await store.project_call_counts()

    assert store_run(scenario) == ([("ent/other", 1), (P, 3)], [("ent/other", 1), (P, 2)])


def _obj(object_id, n, at_us):
    val = msgspec.json.encode({"n": n}).decode()
    return ObjectVersion(
        project_id=P, object_id=object_id, digest=f"d{n}", kind="object", base_object_class=None,
        leaf_object_class=None, val=val, wb_user_id=None, created_at_us=at_us,
    )  # fmt: skip


def test_objects_versions_latest_aliases_tags_and_deletes(store_run):
    async def scenario(store):
        for n in range(3):
            await store.put_object(_obj("o", n, n))
        again = await store.put_object(_obj("o", 0, 10))  # re-published: latest again
        latest = await store.read_object(P, "o", "latest")
        assert await store.set_aliases(P, "o", "d1", ["prod"])
        assert await store.add_tags(P, "o", "d2", ["good"])
        by_alias = await store.read_object(P, "o", "prod")
        tagged = await store.query_objects(ObjectsQuery(project_id=P, tags=("good",)))
        gone = await store.delete_objects(P, "o", ["d0"], 99)
        after = await store.read_object(P, "o", "latest")
        labels = await store.object_labels(P, [("o", "d1"), ("o", "d2")])
        return (again.version_index, latest.digest, by_alias.digest, [v.digest for v in tagged],
                [v.digest for v in gone], after.digest, labels,
                await store.label_names(P, "tag"))  # fmt: skip

    index, latest, by_alias, tagged, gone, after, labels, tags = store_run(scenario)
    assert (index, latest, by_alias, tagged, gone) == (0, "d0", "d1", ["d2"], ["d0"])
    assert after == "d2" and tags == ["good"]
    assert labels == {("o", "d1"): ([], ["prod"]), ("o", "d2"): (["good"], [])}


def test_tables_files_and_docs(store_run):
    async def scenario(store):
        await store.put_table(P, "tab", ["r1", "r2"], [("r1", '{"a":1}'), ("r2", '{"a":2}')])
        await store.put_file(P, "f", b"bytes")
        docs = [Doc(P, f"id{i}", i, msgspec.json.encode({"id": f"id{i}", "n": i}).decode())
                for i in range(3)]  # fmt: skip
        await store.put_docs("feedback", docs)
        page = await store.query_docs("feedback", DocsQuery(
            project_id=P, query={"$expr": {"$gt": [{"$getField": "n"}, {"$literal": 0}]}},
            sort_by=(("n", True),), limit=1))  # fmt: skip
        replaced = await store.replace_doc("feedback", "id0", Doc(P, "new", 5, '{"id":"new"}'))
        return (await store.table_row_digests(P, "tab"), await store.table_rows(P, ["r2", "zz"]),
                await store.read_file(P, "f"), page, replaced,
                await store.delete_docs("feedback", P, ["id1", "id2"]))  # fmt: skip

    digests, rows, content, page, replaced, deleted = store_run(scenario)
    assert digests == ["r1", "r2"] and rows == {"r2": '{"a":2}'} and content == b"bytes"
    assert page.docs == [{"id": "id2", "n": 2}] and page.total == 2
    assert replaced is True and deleted == 2


def test_count_store_keeps_objects_but_no_calls(tmp_path):
    async def scenario():
        store = CountStore()
        try:
            await store.insert_calls([], [], [_call("r")])
            await store.put_object(_obj("o", 0, 0))
            return await _ids(store), (await store.read_object(P, "o", "latest")).digest
        finally:
            await store.close()

    assert run_on("asyncio", scenario()) == ([], "d0")
