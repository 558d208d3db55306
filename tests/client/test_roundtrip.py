"""Every seed method end to end against a real ``engine serve``: what is created reads back."""

from __future__ import annotations

import pytest

from engine import HTTPError
from engine.wire import calls as c
from engine.wire import costs as k
from engine.wire import feedback as f
from engine.wire import files as fi
from engine.wire import misc as m
from engine.wire import objects as o
from engine.wire import query as q
from engine.wire import tables as t
from engine.wire import uuid7
from tests.client.helpers import end, rows, start

pytestmark = pytest.mark.integration


def _call(client, project, **fields):
    started = client.call_start({"start": start(project, **fields)})
    client.call_end({"end": end(project, started.id)})
    return started


def test_server_info_reads_both_fields(client):
    info = client.server_info()
    assert isinstance(info, q.ServerInfoRes)
    assert info.min_required_weave_python_version and info.trace_server_version


def test_ensure_project_exists_upserts_through_graphql(client):
    assert client.ensure_project_exists("client", "made") == m.EnsureProjectExistsRes(
        project_name="made")


def test_call_start_end_read_back(client, project):
    started = _call(client, project)
    assert isinstance(started, c.CallStartRes)
    call = client.call_read({"project_id": project, "id": started.id}).call
    assert call is not None and call.id == started.id and call.output == {"y": 2}
    assert call.trace_id == started.trace_id and call.ended_at is not None


def test_call_start_batch_upserts_starts_and_ends(client, project):
    s = start(project)
    res = client.call_start_batch(c.CallCreateBatchReq(batch=[
        c.StartBatchItem(req=c.CallStartReq(start=c.StartedCallSchemaForInsert(**s))),
        c.EndBatchItem(req=c.CallEndReq(end=c.EndedCallSchemaForInsert(**end(project, s["id"])))),
    ]))
    assert isinstance(res, c.CallCreateBatchRes)
    assert client.call_read({"project_id": project, "id": s["id"]}).call.output == {"y": 2}


def test_calls_query_stream_stats_update_delete(client, project):
    ids = [_call(client, project, op_name=f"op{i}").id for i in range(3)]
    streamed = list(client.calls_query_stream({"project_id": project}))
    assert sorted(x.id for x in streamed) == sorted(ids)
    assert all(isinstance(x, q.CallSchema) for x in streamed)
    collected = client.calls_query({"project_id": project, "filter": {"op_names": ["op1"]}})
    assert [x.id for x in collected.calls] == [ids[1]]
    assert client.calls_query_stats({"project_id": project}).count == 3
    client.call_update({"project_id": project, "call_id": ids[0], "display_name": "renamed"})
    assert client.call_read({"project_id": project, "id": ids[0]}).call.display_name == "renamed"
    assert client.calls_delete({"project_id": project, "call_ids": [ids[2]]}).num_deleted == 1
    assert client.calls_query_stats({"project_id": project}).count == 2


def test_objects_create_read_query_delete(client, project):
    made = client.obj_create({"obj": {"project_id": project, "object_id": "cfg", "val": {"a": 1}}})
    second = client.obj_create({"obj": {"project_id": project, "object_id": "cfg",
                                         "val": {"a": 2}}})
    assert isinstance(made, o.ObjCreateRes) and made.digest != second.digest
    latest = client.obj_read({"project_id": project, "object_id": "cfg", "digest": "latest"})
    assert latest.obj.val == {"a": 2} and latest.obj.digest == second.digest
    by_digest = client.obj_read({"project_id": project, "object_id": "cfg",
                                 "digest": made.digest})
    assert by_digest.obj.val == {"a": 1}
    found = client.objs_query({"project_id": project, "filter": {"object_ids": ["cfg"]}})
    assert {x.digest for x in found.objs} == {made.digest, second.digest}
    assert client.obj_delete({"project_id": project, "object_id": "cfg"}).num_deleted == 2
    with pytest.raises(HTTPError) as err:
        client.obj_read({"project_id": project, "object_id": "cfg", "digest": "latest"})
    assert err.value.status == 404


def test_ops_create_read_query(client, project):
    op = {"project_id": project, "object_id": "predict", "val": {"_type": "Op", "code": "f"}}
    made = client.op_create({"op_obj": op})
    assert isinstance(made, o.OpCreateRes)
    read = client.op_read({"project_id": project, "name": "predict", "digest": made.digest})
    assert read.op_obj.digest == made.digest
    found = client.ops_query({"project_id": project, "filter": {"op_names": ["predict"]}})
    assert [x.digest for x in found.op_objs] == [made.digest]


def test_tables_create_update_query_stats(client, project):
    made = client.table_create({"table": {"project_id": project, "rows": rows(3)}})
    assert isinstance(made, t.TableCreateRes) and len(made.row_digests) == 3
    updated = client.table_update({"project_id": project, "base_digest": made.digest, "updates": [
        {"append": {"row": {"i": 3}}}, {"pop": {"index": 0}}]})
    queried = client.table_query({"project_id": project, "digest": updated.digest})
    assert [r.val["i"] for r in queried.rows] == [1, 2, 3]
    streamed = list(client.table_query_stream({"project_id": project, "digest": updated.digest}))
    assert [r.val["i"] for r in streamed] == [1, 2, 3]
    assert client.table_query_stats({"project_id": project, "digest": made.digest}).count == 3
    batch = client.table_query_stats_batch({"project_id": project,
                                            "digests": [made.digest, updated.digest]})
    assert sorted(x.count for x in batch.tables) == [3, 3]


def test_refs_read_batch_resolves_object_refs(client, project):
    made = client.obj_create({"obj": {"project_id": project, "object_id": "r", "val": [1, 2]}})
    ref = f"weave:///{project}/object/r:{made.digest}"
    assert client.refs_read_batch({"refs": [ref]}).vals == [[1, 2]]


def test_files_create_read_stats(client, project):
    content = bytes(range(256)) * 4
    made = client.file_create(fi.FileCreateReq(project_id=project, name="blob.bin",
                                               content=content))
    read = client.file_content_read({"project_id": project, "digest": made.digest})
    assert read == fi.FileContentReadRes(content=content)
    assert client.files_stats({"project_id": project}).total_size_bytes >= len(content)


def test_feedback_create_query_replace_purge(client, project):
    call = _call(client, project)
    ref = f"weave:///{project}/call/{call.id}"
    made = client.feedback_create({"project_id": project, "weave_ref": ref,
                                   "feedback_type": "note", "payload": {"note": "ok"}})
    assert isinstance(made, f.FeedbackCreateRes)
    found = client.feedback_query({"project_id": project})
    assert [x["id"] for x in found.result] == [made.id]
    replaced = client.feedback_replace({"project_id": project, "weave_ref": ref,
                                        "feedback_type": "note", "payload": {"note": "better"},
                                        "feedback_id": made.id})
    notes = [x["payload"] for x in client.feedback_query({"project_id": project}).result]
    assert notes == [{"note": "better"}] and replaced.id != made.id
    client.feedback_purge({"project_id": project,
                           "query": {"$expr": {"$eq": [{"$getField": "id"},
                                                       {"$literal": replaced.id}]}}})
    assert client.feedback_query({"project_id": project}).result == []


def test_costs_create_query_purge(client, project):
    made = client.cost_create({"project_id": project, "costs": {
        "my-llm": {"prompt_token_cost": 0.001, "completion_token_cost": 0.002}}})
    assert isinstance(made, k.CostCreateRes) and made.ids[0][1] == "my-llm"  # [id, llm_id]
    found = client.cost_query({"project_id": project})
    assert [x.llm_id for x in found.results] == ["my-llm"]
    client.cost_purge({"project_id": project,
                       "query": {"$expr": {"$eq": [{"$getField": "id"},
                                                   {"$literal": made.ids[0][0]}]}}})
    assert client.cost_query({"project_id": project}).results == []


def test_project_stats_count_what_was_stored(client, project):
    _call(client, project)
    stats = client.project_stats({"project_id": project})
    assert isinstance(stats, m.ProjectStatsRes) and stats.trace_storage_size_bytes > 0


def test_threads_query_stream_aggregates_turns(client, project):
    for _ in range(2):  # a turn is a call whose turn_id is its own id
        call_id = uuid7()
        _call(client, project, id=call_id, thread_id="t1", turn_id=call_id)
    threads = list(client.threads_query_stream({"project_id": project}))
    assert [(x.thread_id, x.turn_count) for x in threads] == [("t1", 2)]


def test_otel_export_stores_spans_as_calls(client, project):
    span = {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
            "name": "otel-op", "startTimeUnixNano": "1700000000000000000",
            "endTimeUnixNano": "1700000001000000000", "kind": 1}
    traces = {"resourceSpans": [{"resource": {"attributes": []},
                                 "scopeSpans": [{"scope": {"name": "t"}, "spans": [span]}]}]}
    assert isinstance(client.otel_export({"project_id": project, "traces": traces}),
                      m.OtelExportRes)
    assert client.calls_query_stats({"project_id": project}).count == 1


def test_actions_execute_batch_accepts_known_calls(client, project):
    call = _call(client, project)
    made = client.obj_create({"obj": {"project_id": project, "object_id": "scorer",
                                      "val": {"name": "scorer", "config": {
                                          "action_type": "contains_words",
                                          "target_words": ["y"]}}}})
    res = client.actions_execute_batch({
        "project_id": project, "call_ids": [call.id],
        "action_ref": f"weave:///{project}/object/scorer:{made.digest}"})
    assert isinstance(res, m.ActionsExecuteBatchRes)


def test_completions_echo_model_answers_and_streams(client, project):
    req = {"project_id": project, "track_llm_call": False,
           "inputs": {"model": "echo", "messages": [{"role": "user", "content": "hi there"}]}}
    answer = client.completions_create(req)
    assert isinstance(answer, m.CompletionsCreateRes) and "hi there" in str(answer.response)
    chunks = list(client.completions_create_stream(req))
    assert chunks and all(isinstance(x, dict) for x in chunks)
