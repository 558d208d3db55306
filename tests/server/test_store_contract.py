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


def test_a_deleted_version_is_read_only_when_deleted_ones_are_asked_for(store_run):
    async def scenario(store):
        for n in range(2):
            await store.put_object(_obj("o", n, n))
        await store.delete_objects(P, "o", ["d0"], 99)
        reads = [await store.read_object(P, "o", v, include_deleted=True) for v in ("d0", "v0", "d1")]
        return (await store.read_object(P, "o", "d0"), [(v.digest, v.deleted_at_us) for v in reads],
                await store.read_object(P, "o", "d9", include_deleted=True))  # fmt: skip

    live, reads, never = store_run(scenario)
    assert live is None and never is None
    assert reads == [("d0", 99), ("d0", 99), ("d1", None)]


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


def test_retention_settings_and_the_calls_deleted_past_them(store_run):
    """weave's project TTL settings are kept per project, the newest winning (null too);
    ``delete_calls_before`` deletes, ``limit`` at a time, the calls that started before the
    cutoff -- by the newest start, else (only an end) by the end, not its start hint -- and
    nothing else: not a later child, not a call restarted after the cutoff, not another
    project's calls. The pruner deletes each retained project's calls past its days."""
    from engine.server._retention import DAY_US, Pruner
    from engine.server._state import Counters

    def end(call_id, t_s, started_s=None):
        return EndedCallSchemaForInsert(
            project_id=P, id=call_id, ended_at=T0 + dt.timedelta(seconds=t_s), summary={},
            started_at=None if started_s is None else T0 + dt.timedelta(seconds=started_s),
            trace_id=None if started_s is None else "t")  # fmt: skip

    async def scenario(store):
        other = "ent/other"
        got = {"unset": await store.retention_days(P)}
        await store.set_retention_days(P, 30, "u")
        await store.set_retention_days(other, 7, None)
        got["set"] = (await store.retention_days(P), await store.retention_days(other))
        got["retained"] = await store.retained_projects()
        await store.set_retention_days(other, None, "u")
        got["unset_again"] = (await store.retention_days(other), await store.retained_projects())

        old = [_call(f"o{i}", t_s=i) for i in range(5)]  # started at 0..4 s
        await store.insert_calls([], [], [*old, _call("kid", "o0", 20), _call("new", t_s=30)])
        await store.insert_calls([], [], [_call("moved", t_s=1)])
        await store.insert_calls([], [], [_call("moved", t_s=40)])  # restarted later: stays
        await store.insert_calls([], [end("lone_old", 5), end("lone_new", 50),
                                      end("hinted", 60, started_s=6)], [])
        await store.insert_calls([], [], [msgspec.structs.replace(_call("x", t_s=0), project_id=other)])
        cutoff = int((T0 + dt.timedelta(seconds=10)).timestamp() * 1e6)
        got["first"] = await store.delete_calls_before(P, cutoff, 3)
        got["rest"] = await store.delete_calls_before(P, cutoff, 100)
        got["none_left"] = await store.delete_calls_before(P, cutoff, 100)
        got["left"] = sorted(await _ids(store))
        got["count"] = await store.count_calls(CallsQuery(project_id=P))
        got["other"] = await store.count_calls(CallsQuery(project_id=other))
        # lone ends are invisible to reads: a later start shows whether the end row is gone
        lone = ("lone_old", "lone_new", "hinted")
        await store.insert_calls([StartedCallSchemaForInsert(
            project_id=P, id=i, op_name="op", trace_id="t", started_at=T0 + dt.timedelta(seconds=70),
            attributes={}, inputs={}) for i in lone], [], [])  # fmt: skip
        query = CallsQuery(project_id=P, filter=CallsFilter(call_ids=list(lone)))
        got["ends_kept"] = {c["id"]: c["ended_at"] is not None
                            async for page in store.query_calls(query) for c in page}  # fmt: skip

        counters = Counters()
        pruner = Pruner(store, counters, interval_s=60.0)
        now_us = cutoff + 30 * DAY_US + 41_000_000  # 30 days after 51 s past T0
        got["pruned"] = (await pruner.prune(now_us), counters.calls_expired)
        got["after_prune"] = sorted(await _ids(store))
        return got

    assert store_run(scenario) == {
        "unset": None, "set": (30, 7), "retained": [("ent/other", 7), (P, 30)],
        "unset_again": (None, [(P, 30)]),
        "first": 3, "rest": 3, "none_left": 0,  # o0..o4, lone_old; hinted ended at 60 s
        "left": ["kid", "moved", "new"], "count": 3, "other": 1,
        "ends_kept": {"lone_old": False, "lone_new": True, "hinted": True},
        "pruned": (3, 3),  # kid (20 s), new (30 s), moved (40 s); the starts at 70 s stay
        "after_prune": ["hinted", "lone_new", "lone_old"],
    }  # fmt: skip


def test_the_store_has_an_id_of_its_data(store_run):
    async def scenario(store):
        return await store.store_id(), await store.store_id()

    first, again = store_run(scenario)
    assert isinstance(first, str) and len(first) >= 16 and first == again


def test_a_sqlite_file_keeps_its_id_and_a_new_file_gets_another(tmp_path):
    async def ids():
        found = []
        for name in ("a.db", "a.db", "b.db"):
            store = SQLiteStore(tmp_path / name)
            try:
                found.append(await store.store_id())
            finally:
                await store.close()
        return found

    a, a_again, b = run_on("asyncio", ids())
    assert a == a_again and a != b


def test_projects_with_objects_are_listed_without_calls(store_run):
    async def scenario(store):
        for project_id, object_id in (("a/objs", "x"), ("b/objs", "y"), ("b/objs", "z")):
            await store.put_object(ObjectVersion(
                project_id=project_id, object_id=object_id, digest=f"d-{object_id}", kind="object",
                base_object_class=None, leaf_object_class=None, val="{}", wb_user_id=None,
                created_at_us=1))
        await store.delete_objects("a/objs", "x", None, 2)
        return await store.object_projects()

    assert store_run(scenario) == [("b/objs",)]


N_REFS = 1000


def test_any_number_of_refs_filters_in_one_query(store_run):
    """2,000 input refs (exact and any-version) are one term each kind: a term per ref
    passed SQLite's expression depth at 1,000 (a 500 the route fuzz test found)."""
    model = "weave:///ent/proj/object/model:abc"

    async def scenario(store):
        uses = msgspec.structs.replace(_call("uses"), inputs={"m": model})
        other = msgspec.structs.replace(_call("other", t_s=1),
                                        inputs={"m": "weave:///ent/proj/object/x:1"})
        await store.insert_calls([], [], [uses, other])
        many = [f"weave:///ent/proj/object/nothing-{i}:d" for i in range(N_REFS)]
        wild = [f"weave:///ent/proj/object/nothing-{i}:*" for i in range(N_REFS)]
        exact = await _ids(store, filter=CallsFilter(input_refs=[*many, model]))
        any_version = await _ids(store, filter=CallsFilter(input_refs=[*wild, "weave:///ent/proj/object/model:*"]))
        none = await _ids(store, filter=CallsFilter(input_refs=many + wild))
        return exact, any_version, none

    assert store_run(scenario) == (["uses"], ["uses"], [])


def test_an_expression_of_thousands_of_operands_is_answered(store_run):
    """$or / $and of 2,000 conditions: nested as a balanced tree, not one level per operand
    (2,000 levels passed SQLite's expression depth of 1,000: a 500)."""
    op = {"$getField": "op_name"}

    async def scenario(store):
        await store.insert_calls([], [], [_call("a"), _call("b", t_s=1)])
        ors = [{"$eq": [op, {"$literal": f"x{i}"}]} for i in range(1999)]
        ors.append({"$eq": [{"$getField": "id"}, {"$literal": "b"}]})
        ands = [{"$eq": [op, {"$literal": "op"}]}] * 2000
        return (await _ids(store, query={"$expr": {"$or": ors}}),
                await _ids(store, query={"$expr": {"$and": ands}}))

    any_of, all_of = store_run(scenario)
    assert any_of == ["b"] and sorted(all_of) == ["a", "b"]


def test_feedback_queries_that_pin_what_it_is_about(store_run):
    """A call's feedback ($eq on weave_ref), a page of calls' ($in, thousands of refs), and
    either inside an $and with other terms: the same answers (order, total, limits) as the
    whole query over every document, which a store narrows to those refs first."""
    ref = lambda i: f"weave:///{P}/call/c{i}"  # noqa: E731

    def doc(i: int, n: int) -> Doc:
        body = {"id": f"f{i}", "weave_ref": ref(n), "feedback_type": "note" if i % 2 else "reaction",
                "payload": {"i": i}}
        return Doc(P, f"f{i}", i, msgspec.json.encode(body).decode())

    def pin(op: str, refs: list[str]) -> dict:
        literal = [{"$literal": r} for r in refs]
        return {op: [{"$getField": "weave_ref"}, literal[0] if op == "$eq" else literal]}

    async def scenario(store):
        await store.put_docs("feedback", [doc(i, i % 50) for i in range(600)])  # 12 per call
        await store.put_docs("feedback", [Doc("other/proj", "o1", 1, msgspec.json.encode(
            {"id": "o1", "weave_ref": ref(1)}).decode())])  # the same ref in another project
        one = await store.query_docs("feedback", DocsQuery(project_id=P, query={"$expr": pin("$eq", [ref(7)])}))
        many = [ref(i) for i in range(3, 2_003)]  # 2,000 refs, 47 of them with feedback
        page = await store.query_docs("feedback", DocsQuery(
            project_id=P, query={"$expr": pin("$in", many)}, sort_by=(("payload.i", True),),
            limit=5, offset=2))  # fmt: skip
        both = await store.query_docs("feedback", DocsQuery(project_id=P, query={"$expr": {"$and": [
            {"$eq": [{"$getField": "feedback_type"}, {"$literal": "note"}]},
            pin("$in", [ref(7), ref(8)])]}}))  # fmt: skip
        either = await store.query_docs("feedback", DocsQuery(project_id=P, query={"$expr": {"$or": [
            pin("$eq", [ref(7)]), pin("$eq", [ref(8)])]}}))  # fmt: skip
        return one, page, both, either

    one, page, both, either = store_run(scenario)
    assert [d["id"] for d in one.docs] == [f"f{i}" for i in range(7, 600, 50)] and one.total == 12
    assert page.total == 600 - 3 * 12 and [d["payload"]["i"] for d in page.docs] == [597, 596, 595, 594, 593]
    assert {d["weave_ref"] for d in both.docs} == {ref(7)} and both.total == 12  # 7 odd: notes
    assert all(d["feedback_type"] == "note" for d in both.docs)
    assert either.total == 24  # an $or pins nothing: every document looked at, as before


def test_integers_beyond_int64_compare_as_numbers(store_run):
    """A literal beyond int64 (weave's servers answer it) is bound as a float: neither store
    can bind it as an integer (SQLite raised OverflowError: a 500)."""
    big = 10**20
    where = lambda op, field, value: {"$expr": {op: [{"$getField": field}, {"$literal": value}]}}  # noqa: E731

    async def scenario(store):
        await store.insert_calls([], [], [_call("a", t_s=1), _call("b", t_s=2)])
        return [sorted(await _ids(store, query=q)) for q in (
            where("$lt", "inputs.n", big), where("$gt", "inputs.n", -big),
            where("$eq", "inputs.n", 2**63), where("$gt", "inputs.n", 2**64),
            {"$expr": {"$in": [{"$getField": "inputs.n"}, [{"$literal": big}, {"$literal": 2}]]}},
            where("$lt", "started_at", big), where("$gt", "ended_at", -big),
            where("$gt", "started_at", big))]  # fmt: skip

    assert store_run(scenario) == [["a", "b"], ["a", "b"], [], [], ["b"], ["a", "b"], ["a", "b"], []]


def test_calls_filter_sort_and_count_by_their_feedback(store_run):
    """``feedback.[<type>].payload.<path>`` / ``….runnable_ref`` as weave's ``scored_by``
    asks for them: a call's value is its oldest feedback of that type; none without one."""
    scorer, ref = "wandb.runnable.s", f"weave:///{P}/object/s:v1"
    get = lambda path: {"$getField": f"feedback.[{scorer}].{path}"}  # noqa: E731
    scored = {"$expr": {"$and": [{"$not": [{"$eq": [get("payload.output"), {"$literal": ""}]}]}]}}

    def fb(i: int, call_id: str, feedback_type: str, payload: dict, **more) -> Doc:
        body = {"id": f"f{i}", "weave_ref": f"weave:///{P}/call/{call_id}",
                "feedback_type": feedback_type, "payload": payload, **more}  # fmt: skip
        return Doc(P, f"f{i}", i, msgspec.json.encode(body).decode())

    async def scenario(store):
        await store.insert_calls([], [], [_call("a"), _call("b", t_s=1), _call("c", t_s=2)])
        await store.put_docs("feedback", [
            fb(1, "a", scorer, {"output": {"score": 0.9}}, runnable_ref=ref),
            fb(2, "b", scorer, {"output": {"score": 0.2}}, runnable_ref=f"weave:///{P}/object/s:v0"),
            fb(3, "b", scorer, {"output": {"score": 0.95}}, runnable_ref=ref),  # not b's oldest
            fb(4, "c", "wandb.reaction.1", {"emoji": "x"}),
            Doc("other/proj", "f5", 5, msgspec.json.encode({"id": "f5", "feedback_type": scorer,
                "weave_ref": "weave:///other/proj/call/c", "payload": {"output": 1}}).decode()),
        ])  # fmt: skip
        by_score = lambda d: (SortBy(field=f"feedback.[{scorer}].payload.output.score", direction=d),)  # noqa: E731
        return {
            "scored": await _ids(store, query=scored),
            "by_ref": await _ids(store, query={"$expr": {"$eq": [get("runnable_ref"), {"$literal": ref}]}}),
            "over": await _ids(store, query={"$expr": {"$gt": [get("payload.output.score"), {"$literal": 0.5}]}}),
            "desc": await _ids(store, sort_by=by_score("desc")),
            "asc": await _ids(store, sort_by=by_score("asc")),
            "count": await store.count_calls(CallsQuery(project_id=P, query=scored)),
            "any_type": await _ids(store, query={"$expr": {"$eq": [
                {"$getField": "feedback.[*].payload.emoji"}, {"$literal": "x"}]}}),
        }  # fmt: skip

    assert store_run(scenario) == {"scored": ["a", "b"], "by_ref": ["a"], "over": ["a"],
                                   "desc": ["a", "b", "c"], "asc": ["c", "b", "a"], "count": 2,
                                   "any_type": ["c"]}  # fmt: skip


def test_reactions_and_notes_match_any_of_a_calls_and_booleans_read_as_text(store_run):
    """weave: ``$eq`` / ``$contains`` on a reaction or note field hold when any of the
    call's reactions (notes) passes, not only its oldest, and ``$eq`` null when it has none;
    a payload's boolean reads as ``true`` / ``false`` (sorted after numbers)."""
    emoji = {"$getField": "feedback.[wandb.reaction.1].payload.emoji"}
    note = {"$getField": "feedback.[wandb.note.1].payload.note"}
    passed = {"$getField": "feedback.[custom].payload.passed"}

    def fb(i: int, call_id: str, feedback_type: str, payload: dict) -> Doc:
        body = {"id": f"f{i}", "weave_ref": f"weave:///{P}/call/{call_id}",
                "feedback_type": feedback_type, "payload": payload}  # fmt: skip
        return Doc(P, f"f{i}", i, msgspec.json.encode(body).decode())

    def where(op: str, *args) -> dict:
        return {"$expr": {op: list(args)}}

    async def scenario(store):
        await store.insert_calls([], [], [_call("a"), _call("b", t_s=1), _call("c", t_s=2)])
        await store.put_docs("feedback", [
            fb(1, "a", "wandb.reaction.1", {"emoji": "up"}), fb(2, "a", "wandb.reaction.1", {"emoji": "down"}),
            fb(3, "b", "wandb.reaction.1", {"emoji": "up"}), fb(4, "a", "wandb.note.1", {"note": "one"}),
            fb(5, "a", "wandb.note.1", {"note": "Two"}), fb(6, "a", "custom", {"passed": True}),
            fb(7, "b", "custom", {"passed": False}), fb(8, "c", "custom", {"passed": 1}),
        ])  # fmt: skip
        contains = lambda text: {"$expr": {"$contains": {  # noqa: E731
            "input": note, "substr": {"$literal": text}, "case_insensitive": True}}}
        return {
            "down": await _ids(store, query=where("$eq", emoji, {"$literal": "down"})),
            "up": await _ids(store, query=where("$eq", emoji, {"$literal": "up"})),
            "none": await _ids(store, query=where("$eq", emoji, {"$literal": None})),
            "not_down": await _ids(store, query=where("$not", where("$eq", emoji, {"$literal": "down"})["$expr"])),
            "note": await _ids(store, query=contains("two")),
            "both": await _ids(store, query=where("$and", where("$eq", emoji, {"$literal": "down"})["$expr"],
                                                  contains("ONE")["$expr"])),
            "count": await store.count_calls(CallsQuery(project_id=P, query=where("$eq", emoji, {"$literal": "down"}))),
            "true_text": await _ids(store, query=where("$eq", passed, {"$literal": "true"})),
            "true_bool": await _ids(store, query=where("$eq", passed, {"$literal": True})),
            "false_part": await _ids(store, query={"$expr": {"$contains": {"input": passed, "substr": {"$literal": "als"}}}}),
            "asc": await _ids(store, sort_by=(SortBy(field="feedback.[custom].payload.passed", direction="asc"),)),
        }  # fmt: skip

    assert store_run(scenario) == {
        "down": ["a"], "up": ["a", "b"], "none": ["c"], "not_down": ["b", "c"], "note": ["a"],
        "both": ["a"], "count": 1, "true_text": ["a"], "true_bool": ["a", "c"], "false_part": ["b"],
        "asc": ["c", "b", "a"],
    }  # fmt: skip


def test_a_json_sort_orders_numbers_then_text_as_text(store_run):
    """As SQLite orders ``json_extract``: missing, then numbers (booleans as 1/0) by value,
    then strings as text, digits or not ("10" before "9")."""

    async def scenario(store):
        values = {"a": "9", "b": "10", "c": 3, "d": True, "e": "x"}
        calls = [_call(k, t_s=i, output={"v": v}) for i, (k, v) in enumerate(values.items())]
        await store.insert_calls([], [], [*calls, _call("f", t_s=9)])
        return await _ids(store, sort_by=(SortBy(field="output.v", direction="asc"),))

    assert store_run(scenario) == ["f", "d", "c", "b", "a", "e"]


def _json_bytes(call) -> int:
    return sum(len(v) for v in call.values() if isinstance(v, msgspec.Raw))


def test_pages_of_big_calls_end_once_their_json_passes_the_stores_limit(store_run):
    """Every way a page is read (a stream, a short page, a page read on from where the one
    before ended) hands calls over in pages that end at the call passing ``chunk_bytes``."""
    limit_bytes = 64 * 1024
    calls = [_call(f"c{i:02d}", t_s=i, output={"text": "y" * 20_000}) for i in range(40)]
    reads = {"stream": {}, "short page": {"limit": 30}, "first page": {"limit": 15},
             "page read on": {"limit": 15, "offset": 15}}  # fmt: skip

    async def scenario(store):
        store.chunk_bytes = limit_bytes
        await store.insert_calls([], [], calls)
        got = {}
        for name, query in reads.items():
            pages = [p async for p in store.query_calls(CallsQuery(project_id=P, **query))]
            got[name] = ([c["id"] for p in pages for c in p],
                         [[_json_bytes(c) for c in p] for p in pages])  # fmt: skip
        return got

    for name, (ids, sizes) in store_run(scenario).items():
        first, limit = reads[name].get("offset", 0), reads[name].get("limit", 40)
        assert ids == [c.id for c in calls][first : first + limit], name
        # each page ends at the call that takes it past the limit: the fourth of ~20 KB
        assert all(sum(page[:-1]) < limit_bytes and len(page) <= 4 for page in sizes), (name, sizes)


def test_json_columns_not_asked_for_read_as_none_and_still_filter_and_sort(store_run):
    calls = [_call(f"c{i}", t_s=i, output={"o": i}) for i in range(4)]
    over_one = {"$expr": {"$gt": [{"$getField": "inputs.n"}, {"$literal": 1}]}}
    by_input = (SortBy(field="inputs.n", direction="desc"),)

    async def scenario(store):
        await store.insert_calls([], [], calls)
        got = {}
        for shown in [("output",), ()]:
            query = CallsQuery(project_id=P, query=over_one, sort_by=by_input, json_columns=shown)
            got[shown] = [{k: msgspec.json.decode(v) if isinstance(v, msgspec.Raw) else v
                           for k, v in c.items() if k in ("id", *_JSON)}
                          async for page in store.query_calls(query) for c in page]  # fmt: skip
        return got

    nothing = dict.fromkeys(_JSON)
    assert store_run(scenario) == {
        ("output",): [{**nothing, "id": "c3", "output": {"o": 3}},
                      {**nothing, "id": "c2", "output": {"o": 2}}],
        (): [{**nothing, "id": "c3"}, {**nothing, "id": "c2"}],
    }  # fmt: skip


_JSON = ("attributes", "inputs", "otel_dump", "output", "summary")
