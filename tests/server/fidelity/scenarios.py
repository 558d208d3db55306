"""The differential scenario: weave client requests, grouped by route family.

Every request is one weave 0.54.0 client method and the body weave documents for it;
each family works in a project of its own. Times lie in 2024 (``compare.SCENARIO_YEAR``);
values only a server knows (digests, made-up ids) come from that server's own earlier
answers (``lambda c: …``).
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable
from typing import Any

from tests.server.fidelity.compare import Step
from tests.server.fidelity.scenarios_evals import evals
from tests.server.fidelity.scenarios_feedback import feedback_fields

T0 = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
USER = "user-a"  # what the hosted server fills in from the caller's key


def at(seconds: float) -> str:
    return (T0 + dt.timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def _get(field: str) -> dict[str, Any]:
    return {"$getField": field}


def _lit(value: Any) -> dict[str, Any]:
    return {"$literal": value}


def _expr(op: str, *args: Any) -> dict[str, Any]:
    return {"$expr": {op: list(args)}}


# -- calls --------------------------------------------------------------------------------

CP = "fid/calls"
OP_PREDICT = f"weave:///{CP}/op/predict:h9Ch4KTNtpV3KmtlaQ8SgrE4ym8pLwPxIm8XcdHlKk0"
OP_SCORE = f"weave:///{CP}/op/score:2ZPx0dYg7TTM8xsHXD3kfNfpRLBvdmxMIPcIM5mOOeY"
OP_EVAL = f"weave:///{CP}/op/evaluate:OkUOQvZmbYZnqNvrk2rO6dGcFMDjM7YmRiRVMJm4LUk"
DOC_REF = f"weave:///{CP}/object/doc:c5Rr6RGTpoPwNyE5VNJl7Ei9ndX44Sb9CHmrqBvkz6A"
MODEL_REF = f"weave:///{CP}/object/model:QWqDPAt0OBmh6TBCPnGqwzvuuazMxmRQRK9FMx6vqGw"
USAGE = {"gpt-4o": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30,
                    "requests": 1}}  # fmt: skip


def _start(call_id: str, op: str, t_s: float, inputs: dict[str, Any], *, trace: str = "t1",
           parent: str | None = None, **extra: Any) -> dict[str, Any]:  # fmt: skip
    return {"project_id": CP, "id": call_id, "trace_id": trace, "parent_id": parent,
            "op_name": op, "started_at": at(t_s), "attributes": {"env": "test"},
            "inputs": inputs, "wb_user_id": USER, **extra}  # fmt: skip


def _end(call_id: str, t_s: float, output: Any, summary: dict[str, Any] | None = None,
         **extra: Any) -> dict[str, Any]:  # fmt: skip
    return {"project_id": CP, "id": call_id, "ended_at": at(t_s), "output": output,
            "summary": summary or {}, **extra}  # fmt: skip


TREE = [
    _start("r1", OP_PREDICT, 0, {"question": "What is 2+2?", "n": 4, "flag": True,
                                 "meta": {"lang": "en"}, "doc": DOC_REF},
           thread_id="th1", turn_id="r1", wb_run_id="fid/calls/run1"),  # fmt: skip
    _start("c1", OP_SCORE, 1, {"n": 10, "text": "Hello World"}, parent="r1"),
    _start("g1", "plain_op", 1.1, {"n": 2.5}, parent="c1", display_name="Grand"),
    _start("c2", OP_PREDICT, 1.5, {"n": "7"}, parent="r1"),
    _start("r2", OP_EVAL, 3, {"n": 1, "model": MODEL_REF}, trace="t2", display_name="My eval",
           thread_id="th1", turn_id="r2", wb_user_id="user-b"),
]
ENDS = [
    _end("g1", 1.2, "text output with Hello"),
    _end("c1", 1.25, 0.5),
    _end("c2", 2, None, exception="ValueError: boom"),
    _end("r1", 2.5, {"answer": "four", "score": 0.9}, {"usage": USAGE}),
    _end("r2", 4, {"result": f"weave:///{CP}/object/result:ZqDPAt0OBmh6TBCPnGqwzvuuazMxmRQRK9FMx6v"},
         {"status_counts": {"success": 2, "error": 1}}),  # fmt: skip
]
RUNNING = _start("r3", OP_PREDICT, 10, {"n": 3}, trace="t3")
COMPLETE = {**_start("r4", "later_op", 20, {"n": 5}, trace="t4"),
            **_end("r4", 21.75, [1, 2, 3], {"usage": USAGE})}  # fmt: skip


def _upsert(items: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    return {"batch": [{"mode": mode, "req": {mode: body}} for mode, body in items]}


def _query(label: str, **req: Any) -> Step:
    return Step("calls.query", f"calls.query.{label}", "calls_query", {"project_id": CP, **req})


def _where(label: str, query: dict[str, Any], **req: Any) -> Step:
    return _query(f"expr.{label}", query=query, **req)


def _sort(label: str, *fields: tuple[str, str]) -> Step:
    sort_by = [{"field": f, "direction": d} for f, d in fields]
    return _query(f"sort.{label}", sort_by=sort_by)


def calls_ingest() -> list[Step]:
    family = "calls.ingest"
    return [
        Step(family, "ingest.upsert_batch", "call_start_batch",
             _upsert([("start", s) for s in TREE] + [("end", e) for e in ENDS[:3]])),
        Step(family, "ingest.end_single", "call_end", {"end": ENDS[3]}),
        Step(family, "ingest.end_batch", "call_start_batch", _upsert([("end", ENDS[4])])),
        Step(family, "ingest.start_running", "call_start", {"start": RUNNING}),
        Step(family, "ingest.complete_v2", "calls_complete", {"batch": [COMPLETE]}),
        Step(family, "ingest.start_no_ids", "call_start", {"start": {
            **_start("x", "tmp", 30, {}), "id": None, "trace_id": None, "project_id": "fid/other"}}),
    ]  # fmt: skip


def calls_reads() -> list[Step]:
    return [
        _query("all"),
        _query("limit_offset", limit=2, offset=1),
        _query("op_names", filter={"op_names": [OP_SCORE, "plain_op"]}),
        _query("op_names_wildcard", filter={"op_names": [f"weave:///{CP}/op/predict:*"]}),
        _query("trace_ids", filter={"trace_ids": ["t2", "t3"]}),
        _query("call_ids", filter={"call_ids": ["c2", "g1", "nope"]}),
        _query("parent_ids", filter={"parent_ids": ["r1"]}),
        _query("roots", filter={"trace_roots_only": True}),
        _query("wb_user_ids", filter={"wb_user_ids": ["user-b"]}),
        _query("wb_run_ids", filter={"wb_run_ids": ["fid/calls/run1"]}),
        _query("thread_ids", filter={"thread_ids": ["th1"]}),
        _query("turn_ids", filter={"turn_ids": ["r2"]}),
        # weave: an empty list is no filter (thread_ids: none match)
        *(_query(f"empty_{name}", filter={name: []}) for name in (
            "call_ids", "op_names", "trace_ids", "parent_ids", "wb_user_ids", "wb_run_ids",
            "thread_ids")),
        _query("input_refs", filter={"input_refs": [DOC_REF]}),
        _query("input_refs_wildcard", filter={"input_refs": [f"weave:///{CP}/object/model:*"]}),
        _query("output_refs", filter={"output_refs": [ENDS[4]["output"]["result"]]}),
        _query("filter_and_limit", filter={"trace_ids": ["t1"]}, limit=2),
        _query("columns", columns=["id", "inputs.n", "summary"]),
        # what columns leave out is not read, yet filters and sorts on it as before
        _query("columns_output_by_inputs", columns=["id", "output"],
               sort_by=[{"field": "inputs.n", "direction": "desc"}],
               query=_expr("$gt", _get("inputs.n"), _lit(1))),
        _query("columns_attributes", columns=["attributes", "op_name"]),
        _query("usage_costs_off", filter={"call_ids": ["r1"]}, include_costs=False),
        _query("storage_size", filter={"call_ids": ["r1", "c1"]}, include_storage_size=True),
        _query("total_storage_size", filter={"trace_roots_only": True},
               include_total_storage_size=True),
        _sort("started_desc", ("started_at", "desc")),
        _sort("ended_asc", ("ended_at", "asc")),
        _sort("op_name_then_started", ("op_name", "asc"), ("started_at", "desc")),
        _sort("display_name", ("display_name", "desc")),
        _sort("inputs_n", ("inputs.n", "asc")),
        _sort("output_score", ("output.score", "desc")),
        _sort("attributes_env", ("attributes.env", "asc")),
        _sort("summary_usage", ("summary.usage.gpt-4o.requests", "desc")),
        _sort("status", ("summary.weave.status", "asc")),
        _sort("latency", ("summary.weave.latency_ms", "desc")),
        _sort("trace_name", ("summary.weave.trace_name", "asc")),
        _sort("exception", ("exception", "asc")),
        _sort("wb_user_id", ("wb_user_id", "desc")),
        _where("op_eq", _expr("$eq", _get("op_name"), _lit("plain_op"))),
        _where("display_name_eq", _expr("$eq", _get("display_name"), _lit("My eval"))),
        _where("inputs_gt_double", _expr("$gt", {"$convert": {"input": _get("inputs.n"),
                                                               "to": "double"}}, _lit(3))),  # fmt: skip
        _where("inputs_gte_int", _expr("$gte", {"$convert": {"input": _get("inputs.n"),
                                                              "to": "int"}}, _lit(4))),  # fmt: skip
        _where("inputs_gt_inferred", _expr("$gt", _get("inputs.n"), _lit(3))),
        _where("inputs_lt", _expr("$lt", _get("inputs.n"), _lit(3))),
        _where("inputs_lte", _expr("$lte", _get("inputs.n"), _lit(4))),
        _where("inputs_eq_string", _expr("$eq", _get("inputs.n"), _lit("7"))),
        _where("inputs_nested", _expr("$eq", _get("inputs.meta.lang"), _lit("en"))),
        _where("inputs_bool", _expr("$eq", _get("inputs.flag"), _lit(True))),
        # integers beyond int64 compare as numbers (no SQLite OverflowError: a 500)
        _where("beyond_int64_eq", _expr("$eq", _get("inputs.n"), _lit(10**20))),
        _where("beyond_int64_gt", _expr("$gt", _get("inputs.n"), _lit(2**63))),
        _where("beyond_int64_gt_negative", _expr("$gt", _get("inputs.n"), _lit(-(10**20)))),
        _where("beyond_int64_in", {"$expr": {"$in": [_get("inputs.n"), [_lit(10**20), _lit(4)]]}}),
        _where("not", {"$expr": {"$not": [{"$eq": [_get("op_name"), _lit(OP_PREDICT)]}]}}),
        _where("and", {"$expr": {"$and": [{"$eq": [_get("trace_id"), _lit("t1")]},
                                          {"$gt": [_get("inputs.n"), _lit(3)]}]}}),  # fmt: skip
        _where("or", {"$expr": {"$or": [{"$eq": [_get("id"), _lit("g1")]},
                                        {"$eq": [_get("id"), _lit("r2")]}]}}),  # fmt: skip
        _where("in", {"$expr": {"$in": [_get("id"), [_lit("c1"), _lit("r4"), _lit("zz")]]}}),
        _where("contains", {"$expr": {"$contains": {"input": _get("inputs.text"),
                                                    "substr": _lit("World")}}}),  # fmt: skip
        _where("contains_ci", {"$expr": {"$contains": {"input": _get("output"),
                                                       "substr": _lit("hello"),
                                                       "case_insensitive": True}}}),  # fmt: skip
        _where("output_eq", _expr("$eq", _get("output.answer"), _lit("four"))),
        _where("exception_set", {"$expr": {"$not": [{"$eq": [_get("exception"), _lit(None)]}]}}),
        _where("attributes", _expr("$eq", _get("attributes.env"), _lit("test"))),
        _where("summary_usage", _expr("$gt", _get("summary.usage.gpt-4o.prompt_tokens"), _lit(5))),
        _where("status_error", _expr("$eq", _get("summary.weave.status"), _lit("error"))),
        _where("status_running", _expr("$eq", _get("summary.weave.status"), _lit("running"))),
        _where("status_descendant", _expr("$eq", _get("summary.weave.status"),
                                          _lit("descendant_error"))),  # fmt: skip
        _where("latency_gt", _expr("$gt", _get("summary.weave.latency_ms"), _lit(600))),
        _where("trace_name", _expr("$eq", _get("summary.weave.trace_name"), _lit("predict"))),
        _where("started_after_iso", _expr("$gt", _get("started_at"), _lit(at(1.4)))),
        _where("started_before_iso", _expr("$lt", _get("started_at"), _lit(at(1.05)))),
        _where("ended_after_iso", _expr("$gte", _get("ended_at"), _lit(at(2.5)))),
        _where("wb_user_in", {"$expr": {"$in": [_get("wb_user_id"), [_lit("user-b")]]}}),
        _where("with_filter_sort_page", _expr("$gt", _get("inputs.n"), _lit(2)),
               filter={"trace_roots_only": True}, sort_by=[{"field": "inputs.n", "direction": "desc"}],
               limit=2, offset=1),  # fmt: skip
        Step("calls.query", "calls.read", "call_read", {"project_id": CP, "id": "r1"}),
        Step("calls.query", "calls.read_missing", "call_read", {"project_id": CP, "id": "nope"}),
        Step("calls.query", "calls.read_costs", "call_read",
             {"project_id": CP, "id": "r1", "include_costs": True}),
        Step("calls.query", "calls.stats", "calls_query_stats", {"project_id": CP}),
        Step("calls.query", "calls.stats_filtered", "calls_query_stats",
             {"project_id": CP, "filter": {"trace_ids": ["t1"]}, "limit": 3}),
        Step("calls.query", "calls.stats_expr", "calls_query_stats",
             {"project_id": CP, "query": _expr("$eq", _get("summary.weave.status"), _lit("success"))}),
        Step("calls.query", "calls.stats_storage", "calls_query_stats",
             {"project_id": CP, "filter": {"call_ids": ["g1"]}, "include_total_storage_size": True}),
        Step("calls.query", "calls.stream", "calls_query_stream",
             {"project_id": CP, "filter": {"trace_ids": ["t2"]}}),
        Step("calls.query", "calls.stats_empty_call_ids", "calls_query_stats",
             {"project_id": CP, "filter": {"call_ids": []}}),
        Step("calls.query", "calls.stream_empty_op_names", "calls_query_stream",
             {"project_id": CP, "filter": {"op_names": []}}),
        Step("calls.query", "calls.stats_beyond_int64", "calls_query_stats",
             {"project_id": CP, "query": _expr("$lt", _get("inputs.n"), _lit(10**20))}),
        Step("calls.query", "calls.bad_sort_direction", "calls_query",
             {"project_id": CP, "sort_by": [{"field": "started_at", "direction": "up"}]}),
        Step("calls.query", "calls.bad_expr", "calls_query",
             {"project_id": CP, "query": {"$expr": {"$regex": [_get("id"), _lit("x")]}}}),
    ]  # fmt: skip


def calls_edits() -> list[Step]:
    family = "calls.edit"
    return [
        Step(family, "edit.rename", "call_update",
             {"project_id": CP, "call_id": "c2", "display_name": "renamed", "wb_user_id": USER}),
        Step(family, "edit.after_rename", "calls_query",
             {"project_id": CP, "filter": {"call_ids": ["c2"]}}),
        Step(family, "edit.delete_subtree", "calls_delete",
             {"project_id": CP, "call_ids": ["c1"], "wb_user_id": USER}),
        Step(family, "edit.rename_deleted", "call_update",
             {"project_id": CP, "call_id": "c1", "display_name": "ghost", "wb_user_id": USER}),
        Step(family, "edit.rename_missing", "call_update",
             {"project_id": CP, "call_id": "zzz", "display_name": "ghost", "wb_user_id": USER}),
        Step(family, "edit.rename_nothing", "call_update", {"project_id": CP, "call_id": "c2", "wb_user_id": USER}),
        Step(family, "edit.after_delete", "calls_query", {"project_id": CP}),
        # a deleted call and a missing one: each id asked for counts, as in weave's servers
        Step(family, "edit.delete_again", "calls_delete",
             {"project_id": CP, "call_ids": ["c1", "nope"], "wb_user_id": USER}),
        Step(family, "edit.delete_root", "calls_delete",
             {"project_id": CP, "call_ids": ["r2"], "wb_user_id": USER}),
        Step(family, "edit.stats_after", "calls_query_stats", {"project_id": CP}),
    ]


# -- objects and ops ----------------------------------------------------------------------

OP = "fid/objs"


def _obj(object_id: str, val: Any, **extra: Any) -> dict[str, Any]:
    return {"obj": {"project_id": OP, "object_id": object_id, "val": val, **extra}}


def _objs(label: str, **req: Any) -> Step:
    return Step("objects", f"objs.query.{label}", "objs_query", {"project_id": OP, **req})


MODEL_VAL = {"_type": "MyModel", "_class_name": "MyModel", "_bases": ["Model", "Object", "BaseModel"],
             "name": "m", "temperature": 0.5}  # fmt: skip
OP_VAL = {"_type": "CustomWeaveType", "weave_type": {"type": "Op"},
          "files": {"obj.py": "c2ZYRwYqnSiKQCYJyPOLCDqvZOEcVjOKYrSXdGDlLe0"}}  # fmt: skip


def objects() -> list[Step]:
    f = "objects"
    return [
        Step(f, "objs.create_v0", "obj_create", _obj("cfg", {"a": 1})),
        Step(f, "objs.create_v1", "obj_create", _obj("cfg", {"a": 2})),
        Step(f, "objs.create_v2", "obj_create", _obj("cfg", {"a": 3, "nested": {"x": [1, 2]}})),
        Step(f, "objs.republish_v0", "obj_create", _obj("cfg", {"a": 1})),
        Step(f, "objs.read_latest", "obj_read", {"project_id": OP, "object_id": "cfg", "digest": "latest"}),
        Step(f, "objs.read_v1", "obj_read", {"project_id": OP, "object_id": "cfg", "digest": "v1"}),
        Step(f, "objs.read_digest", "obj_read",
             lambda c: {"project_id": OP, "object_id": "cfg", "digest": c["objs.create_v2"]["digest"]}),
        Step(f, "objs.read_metadata", "obj_read",
             {"project_id": OP, "object_id": "cfg", "digest": "v0", "metadata_only": True}),
        Step(f, "objs.read_missing", "obj_read", {"project_id": OP, "object_id": "none", "digest": "latest"}),
        Step(f, "objs.create_model", "obj_create", _obj("model", MODEL_VAL)),
        Step(f, "objs.create_builtin", "obj_create",
             _obj("lb", {"name": "board", "columns": []}, builtin_object_class="Leaderboard")),
        Step(f, "objs.create_op", "obj_create", _obj("my_op", OP_VAL)),
        Step(f, "objs.create_expected_ok", "obj_create",
             lambda c: _obj("cfg", {"a": 3, "nested": {"x": [1, 2]}},
                            expected_digest=c["objs.create_v2"]["digest"])),  # fmt: skip
        Step(f, "objs.create_expected_bad", "obj_create",
             _obj("cfg", {"a": 9}, expected_digest="wrongwrongwrongwrongwrongwrongwrongwrongwro")),
        _objs("all"),
        _objs("latest_only", filter={"latest_only": True}),
        _objs("object_ids", filter={"object_ids": ["cfg"]}),
        _objs("is_op", filter={"is_op": True}),
        _objs("not_op", filter={"is_op": False, "latest_only": True}),
        _objs("base_classes", filter={"base_object_classes": ["Model"]}),
        _objs("empty_lists", filter={"object_ids": [], "base_object_classes": []}),
        _objs("leaf_classes", filter={"leaf_object_classes": ["Leaderboard"]}),
        _objs("exclude_classes", filter={"exclude_base_object_classes": ["Model"], "latest_only": True}),
        _objs("sort_desc", sort_by=[{"field": "object_id", "direction": "desc"}], limit=3),
        # weave sorts by object_id and created_at only and ignores its other columns (a sort
        # by those alone it answers in no set order: no step)
        _objs("sort_ignored_then_id", sort_by=[{"field": "version_index", "direction": "desc"},
                                               {"field": "object_id", "direction": "desc"}], limit=4),
        _objs("page", limit=2, offset=1),
        _objs("metadata_only", filter={"object_ids": ["model"]}, metadata_only=True),
        _objs("storage_size", filter={"object_ids": ["model"]}, include_storage_size=True),
        Step(f, "objs.set_alias", "obj_set_aliases",
             lambda c: {"project_id": OP, "object_id": "cfg", "digest": c["objs.create_v1"]["digest"],
                        "aliases": ["prod"]}),  # fmt: skip
        Step(f, "objs.add_tags", "obj_add_tags",
             lambda c: {"project_id": OP, "object_id": "cfg", "digest": c["objs.create_v2"]["digest"],
                        "tags": ["good", "big"]}),  # fmt: skip
        Step(f, "objs.read_alias", "obj_read", {"project_id": OP, "object_id": "cfg", "digest": "prod"}),
        Step(f, "objs.read_with_labels", "obj_read",
             {"project_id": OP, "object_id": "cfg", "digest": "v2", "include_tags_and_aliases": True}),
        _objs("by_alias", filter={"aliases": ["prod"]}),
        _objs("by_tag", filter={"tags": ["big"]}, include_tags_and_aliases=True),
        Step(f, "objs.tags_list", "tags_list", {"project_id": OP}),
        Step(f, "objs.aliases_list", "aliases_list", {"project_id": OP}),
        Step(f, "objs.remove_tags", "obj_remove_tags",
             lambda c: {"project_id": OP, "object_id": "cfg", "digest": c["objs.create_v2"]["digest"],
                        "tags": ["big"]}),  # fmt: skip
        Step(f, "objs.remove_aliases", "obj_remove_aliases",
             {"project_id": OP, "object_id": "cfg", "aliases": ["prod"]}),
        Step(f, "objs.delete_v0", "obj_delete",
             lambda c: {"project_id": OP, "object_id": "cfg", "digests": [c["objs.create_v0"]["digest"]]}),
        Step(f, "objs.read_deleted", "obj_read", {"project_id": OP, "object_id": "cfg", "digest": "v0"}),
        Step(f, "objs.latest_after_delete", "obj_read",
             {"project_id": OP, "object_id": "cfg", "digest": "latest"}),
        Step(f, "objs.delete_all", "obj_delete", {"project_id": OP, "object_id": "model"}),
        Step(f, "objs.delete_missing", "obj_delete", {"project_id": OP, "object_id": "none"}),
        _objs("after_deletes"),
        # object ids: weave's object_id_validator
        Step(f, "objs.create_id_longest", "obj_create", _obj("é" + "x" * 127, {"a": 1})),
        Step(f, "objs.create_id_too_long", "obj_create", _obj("x" * 129, {"a": 1})),
        Step(f, "objs.create_id_slash", "obj_create", _obj("a/b", {"a": 1})),
    ]  # fmt: skip


def ops_v2() -> list[Step]:
    f, p = "ops", "fid/ops"
    code = "def add(a, b):\n    return a + b\n"
    return [
        Step(f, "ops.create", "op_create", {"project_id": p, "name": "add", "source_code": code}),
        Step(f, "ops.create_v1", "op_create", {"project_id": p, "name": "add", "source_code": code + "# v1\n"}),
        Step(f, "ops.create_same", "op_create", {"project_id": p, "name": "add", "source_code": code}),
        Step(f, "ops.create_other", "op_create", {"project_id": p, "name": "mul", "source_code": "def mul(): pass\n"}),
        Step(f, "ops.read", "op_read",
             lambda c: {"project_id": p, "object_id": "add", "digest": c["ops.create"]["digest"]}),
        Step(f, "ops.read_missing", "op_read", {"project_id": p, "object_id": "nope", "digest": "latest"}),
        Step(f, "ops.list", "op_list", {"project_id": p}),
        Step(f, "ops.list_page", "op_list", {"project_id": p, "limit": 1, "offset": 1}),
        Step(f, "ops.delete_version", "op_delete",
             lambda c: {"project_id": p, "object_id": "add", "digests": [c["ops.create_v1"]["digest"]]}),
        Step(f, "ops.delete_all", "op_delete", {"project_id": p, "object_id": "mul"}),
        Step(f, "ops.list_after", "op_list", {"project_id": p}),
        Step(f, "ops.objs_query", "objs_query", {"project_id": p, "filter": {"is_op": True}}),
    ]  # fmt: skip


# -- tables, refs, files ------------------------------------------------------------------

TP = "fid/tables"
ROWS = [{"q": "one", "n": 1}, {"q": "two", "n": 2}, {"q": "three", "n": 3, "extra": {"k": "v"}}]


def _tq(label: str, **req: Any) -> Step:
    return Step("tables", f"tables.query.{label}", "table_query",
                lambda c: {"project_id": TP, "digest": c["tables.create"]["digest"], **req})


def tables() -> list[Step]:
    f = "tables"

    def base(label: str):
        return lambda c: c[label]["digest"]

    return [
        Step(f, "tables.create", "table_create", {"table": {"project_id": TP, "rows": ROWS}}),
        Step(f, "tables.create_empty", "table_create", {"table": {"project_id": TP, "rows": []}}),
        Step(f, "tables.create_again", "table_create", {"table": {"project_id": TP, "rows": ROWS}}),
        _tq("all"),
        _tq("page", limit=1, offset=1),
        _tq("sort_desc", sort_by=[{"field": "n", "direction": "desc"}]),
        _tq("sort_string", sort_by=[{"field": "q", "direction": "asc"}]),
        _tq("filter_rows", filter={"row_digests": []}),
        Step(f, "tables.query_rows_by_digest", "table_query",
             lambda c: {"project_id": TP, "digest": c["tables.create"]["digest"],
                        "filter": {"row_digests": c["tables.create"]["row_digests"][1:]}}),
        Step(f, "tables.stats", "table_query_stats",
             lambda c: {"project_id": TP, "digest": c["tables.create"]["digest"]}),
        Step(f, "tables.stats_batch", "table_query_stats_batch",
             lambda c: {"project_id": TP, "digests": [c["tables.create"]["digest"],
                                                      c["tables.create_empty"]["digest"], "nope"]}),
        Step(f, "tables.stats_batch_size", "table_query_stats_batch",
             lambda c: {"project_id": TP, "digests": [c["tables.create"]["digest"]],
                        "include_storage_size": True}),
        Step(f, "tables.update_append", "table_update",
             lambda c: {"project_id": TP, "base_digest": c["tables.create"]["digest"],
                        "updates": [{"append": {"row": {"q": "four", "n": 4}}}]}),
        Step(f, "tables.update_pop", "table_update",
             lambda c: {"project_id": TP, "base_digest": c["tables.update_append"]["digest"],
                        "updates": [{"pop": {"index": 0}}]}),
        Step(f, "tables.update_insert", "table_update",
             lambda c: {"project_id": TP, "base_digest": c["tables.update_pop"]["digest"],
                        "updates": [{"insert": {"index": 1, "row": {"q": "one-and-half"}}}]}),
        Step(f, "tables.update_mixed", "table_update",
             lambda c: {"project_id": TP, "base_digest": c["tables.create"]["digest"],
                        "updates": [{"append": {"row": {"q": "x"}}}, {"pop": {"index": 1}},
                                    {"insert": {"index": 0, "row": {"q": "y"}}}]}),
        Step(f, "tables.update_pop_out_of_range", "table_update",
             lambda c: {"project_id": TP, "base_digest": c["tables.create"]["digest"],
                        "updates": [{"pop": {"index": 7}}]}),
        Step(f, "tables.after_updates", "table_query",
             lambda c: {"project_id": TP, "digest": c["tables.update_mixed"]["digest"]}),
        Step(f, "tables.base_unchanged", "table_query_stats",
             lambda c: {"project_id": TP, "digest": c["tables.create"]["digest"]}),
        Step(f, "tables.from_digests", "table_create_from_digests",
             lambda c: {"project_id": TP, "row_digests": c["tables.create"]["row_digests"][::-1]}),
        Step(f, "tables.from_digests_query", "table_query",
             lambda c: {"project_id": TP, "digest": c["tables.from_digests"]["digest"]}),
        Step(f, "tables.query_missing", "table_query", {"project_id": TP, "digest": "0" * 64}),
        Step(f, "tables.stream", "table_query_stream",
             lambda c: {"project_id": TP, "digest": c["tables.create"]["digest"]}),
        Step(f, "tables.project_stats", "project_stats",
             {"project_id": TP, "include_table_storage_size": True}),
        # rows without the field (or null there) sort last descending (ascending: below)
        Step(f, "tables.create_gaps", "table_create", {"table": {"project_id": TP, "rows": GAPS}}),
        _gaps("sort_desc_gaps", [("n", "desc")]),
        _gaps("sort_desc_gaps_page", [("n", "desc")], limit=2, offset=2),
        _gaps("sort_two_gaps", [("n", "desc"), ("q", "asc")]),
        _gaps("sort_asc_gaps", [("n", "asc")]),
    ]  # fmt: skip


GAPS = [{"q": "one", "n": 1}, {"q": "two", "n": 2}, {"q": "none", "n": None}, {"q": "other"},
        {"q": "three", "n": 3}]  # fmt: skip


def _gaps(label: str, sort: list[tuple[str, str]], **req: Any) -> Step:
    sort_by = [{"field": field, "direction": direction} for field, direction in sort]
    return Step("tables", f"tables.query.{label}", "table_query", lambda c: {
        "project_id": TP, "digest": c["tables.create_gaps"]["digest"], "sort_by": sort_by, **req})


def refs() -> list[Step]:
    f, p = "refs", "fid/refs"
    ds = {"_type": "Dataset", "_class_name": "Dataset", "_bases": ["Object", "BaseModel"],
          "name": "ds", "rows": None}  # fmt: skip

    def ref(c: dict[str, Any], *path: str) -> str:
        obj = f"weave:///{p}/object/holder:{c['refs.obj']['digest']}"
        return "/".join([obj, *path])

    def doomed(c: dict[str, Any], *path: str) -> str:
        return "/".join([f"weave:///{p}/object/doomed:{c['refs.doomed']['digest']}", *path])

    return [
        Step(f, "refs.table", "table_create", {"table": {"project_id": p, "rows": ROWS}}),
        Step(f, "refs.obj", "obj_create", lambda c: {"obj": {"project_id": p, "object_id": "holder", "val": {
            **ds, "rows": f"weave:///{p}/table/{c['refs.table']['digest']}",
            "conf": {"k": [10, 20, {"deep": "yes"}]}}}}),
        Step(f, "refs.object", "refs_read_batch", lambda c: {"refs": [ref(c)]}),
        Step(f, "refs.object_latest", "refs_read_batch",
             {"refs": [f"weave:///{p}/object/holder:latest"]}),
        Step(f, "refs.object_v0", "refs_read_batch", {"refs": [f"weave:///{p}/object/holder:v0"]}),
        Step(f, "refs.deep_path", "refs_read_batch", lambda c: {"refs": [
            ref(c, "attr", "conf", "key", "k", "index", "2", "key", "deep")]}),
        Step(f, "refs.attr", "refs_read_batch", lambda c: {"refs": [ref(c, "attr", "name")]}),
        Step(f, "refs.two", "refs_read_batch", lambda c: {"refs": [ref(c, "attr", "name"), ref(c)]}),
        Step(f, "refs.table_row", "refs_read_batch", lambda c: {"refs": [
            ref(c, "attr", "rows", "id", c["refs.table"]["row_digests"][1])]}),
        Step(f, "refs.table_row_key", "refs_read_batch", lambda c: {"refs": [
            ref(c, "attr", "rows", "id", c["refs.table"]["row_digests"][1], "key", "q")]}),
        Step(f, "refs.call_with_ref", "calls_complete", lambda c: {"batch": [{
            "project_id": p, "id": "rc1", "trace_id": "rt", "op_name": "use", "started_at": at(0),
            "ended_at": at(1), "attributes": {}, "inputs": {"obj": ref(c), "plain": 1},
            "output": {"nested": {"obj": ref(c)}}, "summary": {}}]}),
        Step(f, "refs.expand_columns", "calls_query",
             {"project_id": p, "expand_columns": ["inputs.obj", "output.nested.obj"]}),
        Step(f, "refs.expand_missing_column", "calls_query",
             {"project_id": p, "expand_columns": ["inputs.nothing"]}),
        Step(f, "refs.whole_table", "refs_read_batch",
             lambda c: {"refs": [f"weave:///{p}/table/{c['refs.table']['digest']}"]}),
        Step(f, "refs.missing_object", "refs_read_batch", {"refs": [f"weave:///{p}/object/nope:latest"]}),
        Step(f, "refs.missing_key", "refs_read_batch", lambda c: {"refs": [ref(c, "attr", "nokey")]}),
        Step(f, "refs.malformed", "refs_read_batch", {"refs": ["not-a-ref"]}),
        # a deleted version reads as null, the batch's other refs intact
        Step(f, "refs.doomed", "obj_create", {"obj": {"project_id": p, "object_id": "doomed", "val": {"b": 2}}}),
        Step(f, "refs.call_with_doomed", "calls_complete", lambda c: {"batch": [{
            "project_id": p, "id": "rc2", "trace_id": "rt", "op_name": "use", "started_at": at(2),
            "ended_at": at(3), "attributes": {}, "inputs": {"gone": doomed(c), "live": ref(c)},
            "output": None, "summary": {}}]}),
        Step(f, "refs.delete_doomed", "obj_delete", {"project_id": p, "object_id": "doomed"}),
        Step(f, "refs.live_and_deleted", "refs_read_batch",
             lambda c: {"refs": [ref(c, "attr", "name"), doomed(c), doomed(c, "key", "b")]}),
        Step(f, "refs.expand_deleted", "calls_query", {
            "project_id": p, "filter": {"call_ids": ["rc2"]}, "expand_columns": ["inputs.gone", "inputs.live"]}),
    ]  # fmt: skip


def files() -> list[Step]:
    f, p = "files", "fid/files"
    content = {"$base64": base64.b64encode(b"print('hello')\n").decode()}
    return [
        Step(f, "files.create", "file_create", {"project_id": p, "name": "obj.py", "content": content}),
        Step(f, "files.create_again", "file_create", {"project_id": p, "name": "other.py", "content": content}),
        Step(f, "files.read", "file_content_read",
             lambda c: {"project_id": p, "digest": c["files.create"]["digest"]}),
        Step(f, "files.read_missing", "file_content_read", {"project_id": p, "digest": "nope"}),
        Step(f, "files.stats", "files_stats", {"project_id": p}),
        Step(f, "files.project_stats", "project_stats", {"project_id": p, "include_file_storage_size": True}),
    ]  # fmt: skip


# -- feedback, costs, threads, actions ----------------------------------------------------

FP = "fid/feedback"


def _call_ref(call_id: str) -> str:
    return f"weave:///{FP}/call/{call_id}"


def _feedback(kind: str, payload: dict[str, Any], call_id: str = "f1", **extra: Any) -> dict:
    return {"project_id": FP, "weave_ref": _call_ref(call_id), "feedback_type": kind,
            "payload": payload, "wb_user_id": USER, **extra}  # fmt: skip


def _fq(label: str, **req: Any) -> Step:
    return Step("feedback", f"feedback.query.{label}", "feedback_query", {"project_id": FP, **req})


def feedback() -> list[Step]:
    f = "feedback"
    call = {"project_id": FP, "id": "f1", "trace_id": "ft", "op_name": "op", "started_at": at(0),
            "ended_at": at(1), "attributes": {}, "inputs": {}, "output": "out", "summary": {}}
    fb_id = "0190a6a4-0000-7000-8000-000000000001"
    return [
        Step(f, "feedback.call", "calls_complete", {"batch": [call]}),
        Step(f, "feedback.note", "feedback_create", _feedback("wandb.note.1", {"note": "good"})),
        Step(f, "feedback.reaction", "feedback_create", _feedback("wandb.reaction.1", {"emoji": "👍"})),
        Step(f, "feedback.reaction_alias", "feedback_create", _feedback("wandb.reaction.1", {"emoji": ":thumbs_up:"})),
        Step(f, "feedback.custom", "feedback_create",
             _feedback("custom", {"score": 3, "label": "ok"}, annotation_ref=None, id=fb_id)),
        Step(f, "feedback.batch", "feedback_create_batch", {"batch": [
            _feedback("custom", {"score": 1}, id="0190a6a4-0000-7000-8000-000000000002"),
            _feedback("custom", {"score": 2}, call_id="f2", id="0190a6a4-0000-7000-8000-000000000003")]}),
        _fq("all"),
        _fq("fields", fields=["feedback_type", "payload.score"]),
        _fq("by_type", query=_expr("$eq", _get("feedback_type"), _lit("custom")),
            sort_by=[{"field": "payload.score", "direction": "desc"}]),
        _fq("page", limit=2, offset=1, sort_by=[{"field": "created_at", "direction": "asc"}]),
        _fq("by_ref", query={"$expr": {"$in": [_get("weave_ref"), [_lit(_call_ref("f2"))]]}}),
        _fq("fields_unknown", fields=["id", "zzz"]),
        _fq("query_unknown", query={"$expr": {"$or": [
            {"$eq": [_get("feedback_type"), _lit("custom")]}, {"$eq": [_get("nope"), _lit(1)]}]}}),
        _fq("sort_unknown", sort_by=[{"field": "nope.deeper", "direction": "asc"}]),
        Step(f, "feedback.replace", "feedback_replace", {**_feedback("custom", {"score": 9}),
                                                         "feedback_id": fb_id}),  # fmt: skip
        Step(f, "feedback.replace_missing", "feedback_replace",
             {**_feedback("custom", {"score": 9}), "feedback_id": "0190a6a4-0000-7000-8000-0000000000ff"}),
        Step(f, "feedback.calls_with_feedback", "calls_query",
             {"project_id": FP, "include_feedback": True, "filter": {"call_ids": ["f1"]}}),
        Step(f, "feedback.purge_by_id", "feedback_purge", {"project_id": FP, "query": _expr(
            "$eq", _get("id"), _lit("0190a6a4-0000-7000-8000-000000000002"))}),
        Step(f, "feedback.purge_by_type", "feedback_purge",
             {"project_id": FP, "query": _expr("$eq", _get("feedback_type"), _lit("custom"))}),
        _fq("after_purge", fields=["feedback_type"]),
        # a create with an id already stored: last, so that its effect shows in one answer
        Step(f, "feedback.same_id", "feedback_create",
             _feedback("custom", {"score": 5}, id="0190a6a4-0000-7000-8000-000000000003")),
        Step(f, "feedback.same_id_again", "feedback_create",
             _feedback("custom", {"score": 6}, id="0190a6a4-0000-7000-8000-000000000003")),
        _fq("after_same_id", fields=["id", "payload"]),
        Step(f, "feedback.bad_ref", "feedback_create",
             {**_feedback("custom", {}), "weave_ref": "weave:///other/p/call/x"}),
        # stored as both weave servers store them (they name no call of another project)
        Step(f, "feedback.empty_type", "feedback_create", _feedback("", {"x": 1})),
        Step(f, "feedback.not_a_ref", "feedback_create", {**_feedback("custom", {}), "weave_ref": "not a ref"}),
    ]  # fmt: skip


def costs() -> list[Step]:
    f, p = "costs", "fid/costs"
    call = {"project_id": p, "id": "k1", "trace_id": "kt", "op_name": "llm", "started_at": at(0),
            "ended_at": at(1), "attributes": {}, "inputs": {}, "output": None,
            "summary": {"usage": {"my-model": {"prompt_tokens": 1000, "completion_tokens": 500,
                                               "requests": 1, "total_tokens": 1500}}}}  # fmt: skip
    price = {"prompt_token_cost": 0.01, "completion_token_cost": 0.02, "effective_date": at(-3600)}
    return [
        Step(f, "costs.call", "calls_complete", {"batch": [call]}),
        Step(f, "costs.create", "cost_create", {"project_id": p, "wb_user_id": USER, "costs": {
            "my-model": price, "other-model": {**price, "provider_id": "acme",
                                               "prompt_token_cost_unit": "USD"}}}),
        Step(f, "costs.query", "cost_query", {"project_id": p}),
        Step(f, "costs.query_fields", "cost_query",
             {"project_id": p, "fields": ["llm_id", "prompt_token_cost", "provider_id"],
              "sort_by": [{"field": "llm_id", "direction": "desc"}]}),
        Step(f, "costs.query_expr", "cost_query", {"project_id": p, "fields": ["llm_id"],
                                                   "query": _expr("$eq", _get("llm_id"), _lit("my-model"))}),
        Step(f, "costs.calls_with_costs", "calls_query",
             {"project_id": p, "include_costs": True}),
        Step(f, "costs.read_with_costs", "call_read", {"project_id": p, "id": "k1", "include_costs": True}),
        Step(f, "costs.query_unknown_field", "cost_query", {"project_id": p, "fields": ["llm_id", "nope"]}),
        Step(f, "costs.query_unknown_in_expr", "cost_query", {"project_id": p, "fields": ["llm_id"],
                                                              "query": _expr("$eq", _get("nope"), _lit(1))}),
        Step(f, "costs.purge", "cost_purge", lambda c: {"project_id": p, "query": _expr(
            "$eq", _get("id"), _lit(c["costs.create"]["ids"][1][1]))}),
        Step(f, "costs.purge_non_id", "cost_purge", {"project_id": p, "query": _expr(
            "$eq", _get("llm_id"), _lit("my-model"))}),
        Step(f, "costs.after_purge", "cost_query", {"project_id": p, "fields": ["llm_id"]}),
    ]  # fmt: skip


def threads() -> list[Step]:
    f, p = "threads", "fid/threads"

    def turn(i: int, thread: str, t_s: float, dur: float) -> dict[str, Any]:
        return {"project_id": p, "id": f"turn{i}", "trace_id": f"tt{i}", "op_name": "chat",
                "thread_id": thread, "turn_id": f"turn{i}", "started_at": at(t_s),
                "ended_at": at(t_s + dur), "attributes": {}, "inputs": {}, "summary": {}}  # fmt: skip

    batch = [turn(0, "a", 0, 1), turn(1, "a", 5, 3), turn(2, "a", 10, 0.5), turn(3, "b", 2, 2)]
    return [
        Step(f, "threads.calls", "calls_complete", {"batch": batch}),
        Step(f, "threads.all", "threads_query_stream", {"project_id": p}),
        Step(f, "threads.sorted", "threads_query_stream",
             {"project_id": p, "sort_by": [{"field": "turn_count", "direction": "desc"}]}),
        Step(f, "threads.filtered", "threads_query_stream",
             {"project_id": p, "filter": {"thread_ids": ["b"]}}),
        Step(f, "threads.after", "threads_query_stream",
             {"project_id": p, "filter": {"after_datetime": at(1)}}),
        Step(f, "threads.page", "threads_query_stream",
             {"project_id": p, "limit": 1, "offset": 1,
              "sort_by": [{"field": "thread_id", "direction": "asc"}]}),
        Step(f, "threads.project_stats", "project_stats",
             {"project_id": p, "include_trace_storage_size": True}),
    ]  # fmt: skip


def v2_objects() -> list[Step]:
    """weave's REST object API: datasets, scorers, evaluations, models."""
    f, p = "v2", "fid/v2"
    rows = [{"q": "a", "n": 1}, {"q": "b", "n": 2}]

    def version(label: str, key: str = "digest") -> Callable[[dict[str, Any]], Any]:
        return lambda c: c[label][key]

    steps = [
        Step(f, "v2.dataset_create", "dataset_create", {"project_id": p, "name": "My Data", "rows": rows}),
        Step(f, "v2.dataset_create_v1", "dataset_create",
             {"project_id": p, "name": "My Data", "rows": rows[:1], "description": "one row"}),
        Step(f, "v2.dataset_unnamed", "dataset_create", {"project_id": p, "rows": []}),
        Step(f, "v2.dataset_read", "dataset_read", lambda c: {
            "project_id": p, "object_id": "my_data", "digest": version("v2.dataset_create")(c)}),
        Step(f, "v2.dataset_read_latest", "dataset_read",
             {"project_id": p, "object_id": "my_data", "digest": "latest"}),
        Step(f, "v2.dataset_rows", "table_query", lambda c: {
            "project_id": p, "digest": c["v2.dataset_read"]["rows"].rsplit("/", 1)[1]}),
        Step(f, "v2.dataset_list", "dataset_list", {"project_id": p}),
        Step(f, "v2.dataset_list_page", "dataset_list", {"project_id": p, "limit": 1, "offset": 1}),
        Step(f, "v2.dataset_delete", "dataset_delete", lambda c: {
            "project_id": p, "object_id": "my_data", "digests": [version("v2.dataset_create_v1")(c)]}),
        Step(f, "v2.dataset_list_after", "dataset_list", {"project_id": p}),
        Step(f, "v2.scorer_create", "scorer_create", {
            "project_id": p, "name": "Exact Match", "description": "exact",
            "op_source_code": "def score(output, target):\n    return output == target\n"}),
        Step(f, "v2.scorer_read", "scorer_read", lambda c: {
            "project_id": p, "object_id": "exact_match", "digest": version("v2.scorer_create")(c)}),
        Step(f, "v2.scorer_list", "scorer_list", {"project_id": p}),
        Step(f, "v2.scorer_score_op", "op_read", lambda c: {
            "project_id": p, "object_id": "exact_match_score", "digest": c["v2.scorer_read"]["score_op"]}),
        Step(f, "v2.evaluation_create", "evaluation_create", lambda c: {
            "project_id": p, "name": "QA Eval", "dataset": f"weave:///{p}/object/my_data:latest",
            "scorers": [c["v2.scorer_create"]["scorer"]], "trials": 2, "description": "qa",
            "eval_attributes": {"team": "x"}}),
        Step(f, "v2.evaluation_read", "evaluation_read", lambda c: {
            "project_id": p, "object_id": "qa_eval", "digest": version("v2.evaluation_create")(c)}),
        Step(f, "v2.evaluation_list", "evaluation_list", {"project_id": p}),
        Step(f, "v2.model_create", "model_create", {
            "project_id": p, "name": "Echo Model", "description": "echoes",
            "source_code": "class Echo:\n    def predict(self, q):\n        return q\n",
            "attributes": {"temperature": 0.1}}),
        Step(f, "v2.model_read", "model_read", lambda c: {
            "project_id": p, "object_id": "echo_model", "digest": version("v2.model_create")(c)}),
        Step(f, "v2.model_list", "model_list", {"project_id": p}),
        Step(f, "v2.objs_query", "objs_query", {"project_id": p, "filter": {"latest_only": True,
                                                                         "is_op": False}}),
        Step(f, "v2.run_create", "evaluation_run_create", {
            "project_id": p, "evaluation": f"weave:///{p}/object/qa_eval:latest",
            "model": f"weave:///{p}/object/echo_model:latest"}),
        Step(f, "v2.run_read", "evaluation_run_read", lambda c: {
            "project_id": p, "evaluation_run_id": c["v2.run_create"]["evaluation_run_id"]}),
        Step(f, "v2.run_list", "evaluation_run_list", {"project_id": p}),
        Step(f, "v2.run_list_by_model", "evaluation_run_list", {
            "project_id": p, "filter": {"models": [f"weave:///{p}/object/echo_model:latest"]}}),
        Step(f, "v2.run_finish", "evaluation_run_finish", lambda c: {
            "project_id": p, "evaluation_run_id": c["v2.run_create"]["evaluation_run_id"],
            "summary": {"note": "done"}}),
        Step(f, "v2.run_read_finished", "evaluation_run_read", lambda c: {
            "project_id": p, "evaluation_run_id": c["v2.run_create"]["evaluation_run_id"]}),
        Step(f, "v2.run_calls", "calls_query_stats", {"project_id": p}),
        Step(f, "v2.run_delete", "evaluation_run_delete", lambda c: {
            "project_id": p, "evaluation_run_ids": [c["v2.run_create"]["evaluation_run_id"]]}),
        Step(f, "v2.run_list_after", "evaluation_run_list", {"project_id": p}),
        Step(f, "v2.scorer_delete", "scorer_delete", {"project_id": p, "object_id": "exact_match"}),
        Step(f, "v2.evaluation_delete", "evaluation_delete", {"project_id": p, "object_id": "qa_eval"}),
        Step(f, "v2.model_delete", "model_delete", {"project_id": p, "object_id": "echo_model"}),
        Step(f, "v2.delete_missing", "model_delete", {"project_id": p, "object_id": "nothing"}),
        Step(f, "v2.read_missing", "dataset_read", {"project_id": p, "object_id": "nothing", "digest": "latest"}),
    ]
    return steps  # fmt: skip


def retention() -> list[Step]:
    """weave's project TTL settings (the reference needs wb_user_id on an update)."""
    f, p = "retention", "fid/retention"
    return [
        Step(f, "ttl.read_unset", "project_ttl_settings_read", {"project_id": p}),
        Step(f, "ttl.update", "project_ttl_settings_update",
             {"project_id": p, "retention_days": 30, "wb_user_id": USER}),
        Step(f, "ttl.read", "project_ttl_settings_read", {"project_id": p}),
        Step(f, "ttl.update_zero", "project_ttl_settings_update",
             {"project_id": p, "retention_days": 0, "wb_user_id": USER}),
        Step(f, "ttl.read_after_refused", "project_ttl_settings_read", {"project_id": p}),
        Step(f, "ttl.update_null", "project_ttl_settings_update",
             {"project_id": p, "retention_days": None, "wb_user_id": USER}),
        Step(f, "ttl.read_null", "project_ttl_settings_read", {"project_id": p}),
    ]  # fmt: skip


def all_steps() -> list[Step]:
    return [*calls_ingest(), *calls_reads(), *calls_edits(), *objects(), *ops_v2(), *tables(),
            *refs(), *files(), *feedback(), *feedback_fields(), *costs(), *threads(), *v2_objects(), *evals(),
            *retention()]  # fmt: skip
