"""Realistic instances of every wire model of the non-call modules, shared by the tests."""

from __future__ import annotations

import datetime as dt

from engine.wire import costs, feedback, files, misc, objects, refs, tables
from engine.wire.query import SortBy

PROJECT = "acme/eval-suite"
T0 = dt.datetime(2026, 3, 1, 12, 30, 45, 123456, tzinfo=dt.timezone.utc)
DIGEST = "hY6VQmJkL0S3xH0rU1oB8dQh5Gk7ZcW2fN9tP4aE3sM"
CALL_ID = "01963a2e-4c5b-7d1e-8f20-3a4b5c6d7e8f"
QUERY = {"$expr": {"$and": [
    {"$eq": [{"$getField": "feedback_type"}, {"$literal": "wandb.reaction.1"}]},
    {"$in": [{"$getField": "id"}, [{"$literal": "a"}, {"$literal": "b"}]]},
]}}
SORT = [SortBy(field="created_at", direction="desc")]

_obj_insert = objects.ObjSchemaForInsert(
    project_id=PROJECT, object_id="my-model",
    val={"_type": "Model", "temperature": 0.2, "prompt": "Réponds en français ✓"},
    builtin_object_class="Model", expected_digest=DIGEST)
_obj = objects.ObjSchema(
    project_id=PROJECT, object_id="my-model", created_at=T0, digest=DIGEST, version_index=3,
    is_latest=1, kind="object", base_object_class="Model", leaf_object_class="Model",
    val={"temperature": 0.2}, wb_user_id="VXNlcjox", size_bytes=812, aliases=["latest"],
    tags=["prod"])
_row = {"question": "What is 2+2?", "expected": 4, "tags": ["math", "easy"]}
_feedback = feedback.FeedbackCreateReq(
    id=CALL_ID, project_id=PROJECT, weave_ref=f"weave:///{PROJECT}/call/{CALL_ID}",
    creator="Jane", feedback_type="wandb.reaction.1", payload={"emoji": "👍"},
    scorer_ratings={"helpful": 0.9}, scorer_tags=["concise"])
_feedback_res = feedback.FeedbackCreateRes(
    id=CALL_ID, created_at=T0, wb_user_id="VXNlcjox", payload={"emoji": "👍"})

REQUESTS = [
    objects.ObjCreateReq(obj=_obj_insert),
    objects.ObjReadReq(project_id=PROJECT, object_id="my-model", digest="latest",
                       metadata_only=True),
    objects.ObjQueryReq(
        project_id=PROJECT, filter=objects.ObjectVersionFilter(
            object_ids=["my-model"], latest_only=True, base_object_classes=["Model"]),
        limit=10, offset=0, sort_by=SORT, include_storage_size=True),
    objects.ObjDeleteReq(project_id=PROJECT, object_id="my-model", digests=[DIGEST]),
    objects.OpCreateReq(op_obj=objects.ObjSchemaForInsert(
        project_id=PROJECT, object_id="predict", val={"_type": "CustomWeaveType",
                                                       "files": {"obj.py": DIGEST}})),
    objects.OpReadReq(project_id=PROJECT, name="predict", digest=DIGEST),
    objects.OpQueryReq(project_id=PROJECT, filter=objects.OpVersionFilter(
        op_names=["predict"], latest_only=True)),
    objects.OpCreateV2Req(name="predict", source_code="def predict(x):\n    return x\n"),
    tables.TableCreateReq(table=tables.TableSchemaForInsert(
        project_id=PROJECT, rows=[_row, {"question": "∑?", "expected": None}])),
    tables.TableUpdateReq(project_id=PROJECT, base_digest=DIGEST, updates=[
        tables.TableAppendSpec(append=tables.TableAppendSpecPayload(row=_row)),
        tables.TablePopSpec(pop=tables.TablePopSpecPayload(index=0)),
        tables.TableInsertSpec(insert=tables.TableInsertSpecPayload(index=1, row=_row)),
    ]),
    tables.TableQueryReq(project_id=PROJECT, digest=DIGEST, filter=tables.TableRowFilter(
        row_digests=[DIGEST]), limit=100, offset=10, sort_by=SORT),
    tables.TableQueryStatsReq(project_id=PROJECT, digest=DIGEST),
    tables.TableQueryStatsBatchReq(project_id=PROJECT, digests=[DIGEST],
                                   include_storage_size=True),
    tables.TableCreateFromDigestsReq(project_id=PROJECT, row_digests=[DIGEST, DIGEST]),
    refs.RefsReadBatchReq(refs=[f"weave:///{PROJECT}/object/my-model:{DIGEST}"]),
    files.FileCreateReq(project_id=PROJECT, name="obj.py", content=b"\x00\xffdef f(): pass\n"),
    files.FileContentReadReq(project_id=PROJECT, digest=DIGEST),
    files.FilesStatsReq(project_id=PROJECT),
    _feedback,
    feedback.FeedbackCreateBatchReq(batch=[_feedback]),
    feedback.FeedbackQueryReq(project_id=PROJECT, fields=["id", "payload.emoji"], query=QUERY,
                              sort_by=SORT, limit=10, offset=0),
    feedback.FeedbackPurgeReq(project_id=PROJECT, query=QUERY),
    feedback.FeedbackReplaceReq(
        project_id=PROJECT, weave_ref=f"weave:///{PROJECT}/call/{CALL_ID}",
        feedback_type="note", payload={"note": "better"}, feedback_id=CALL_ID),
    costs.CostCreateReq(project_id=PROJECT, costs={"gpt-4o": costs.CostCreateInput(
        prompt_token_cost=2.5e-6, completion_token_cost=1e-5, effective_date=T0,
        provider_id="openai", cache_read_input_token_cost=1.25e-6)}),
    costs.CostQueryReq(project_id=PROJECT, fields=["id", "llm_id"], query=QUERY, limit=5),
    costs.CostPurgeReq(project_id=PROJECT, query=QUERY),
    misc.ActionsExecuteBatchReq(project_id=PROJECT, action_ref=f"weave:///{PROJECT}/object/"
                                f"judge:{DIGEST}", call_ids=[CALL_ID]),
    misc.CompletionsCreateReq(project_id=PROJECT, inputs=misc.CompletionsCreateRequestInputs(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi 👋"}], temperature=0.0,
        max_tokens=64, stop=["\n\n"]), track_llm_call=False,
        inference_route=misc.InferenceRoute(base_url="http://127.0.0.1:8000/v1",
                                           connection="local", connection_type="dedicated")),
    misc.ProjectStatsReq(project_id=PROJECT, include_file_storage_size=False),
    misc.ThreadsQueryReq(project_id=PROJECT, filter=misc.ThreadsQueryFilter(
        after_datetime=T0, thread_ids=["t-1"]), limit=50, sort_by=[
            SortBy(field="last_updated", direction="desc")]),
    misc.OtelExportReq(project_id=PROJECT, traces={"resourceSpans": []}),
    misc.EnsureProjectExistsReq(entity="acme", project="eval-suite"),
    misc.GraphQLReq(query="mutation UpsertModel($name: String!) { upsertModel(input: "
                    "{name: $name}) { model { name } } }", variables={"name": "eval-suite"}),
]

RESPONSES = [
    objects.ObjCreateRes(digest=DIGEST, object_id="my-model"),
    objects.ObjReadRes(obj=_obj),
    objects.ObjQueryRes(objs=[_obj]),
    objects.ObjDeleteRes(num_deleted=1, deleted_versions=[objects.DeletedObjVersion(
        digest=DIGEST, base_object_class="Model")]),
    objects.OpCreateRes(digest=DIGEST),
    objects.OpReadRes(op_obj=_obj),
    objects.OpQueryRes(op_objs=[_obj]),
    objects.OpCreateV2Res(digest=DIGEST, object_id="predict", version_index=0),
    objects.OpReadV2Res(object_id="predict", digest=DIGEST, version_index=0, created_at=T0,
                        code="def predict(x):\n    return x\n"),
    objects.OpDeleteV2Res(num_deleted=2),
    tables.TableCreateRes(digest=DIGEST, row_digests=[DIGEST]),
    tables.TableUpdateRes(digest=DIGEST, updated_row_digests=[DIGEST]),
    tables.TableQueryRes(rows=[tables.TableRowSchema(digest=DIGEST, val=_row, original_index=0)]),
    tables.TableQueryStatsRes(count=2),
    tables.TableQueryStatsBatchRes(tables=[tables.TableStatsRow(
        count=2, digest=DIGEST, storage_size_bytes=4096)]),
    tables.TableCreateFromDigestsRes(digest=DIGEST),
    refs.RefsReadBatchRes(vals=[{"temperature": 0.2}, None, [1, "two"]]),
    files.FileCreateRes(digest=DIGEST),
    files.FileContentReadRes(content=b"\x00\x01binary\xff"),
    files.FilesStatsRes(total_size_bytes=123456789),
    _feedback_res,
    feedback.FeedbackCreateBatchRes(res=[_feedback_res]),
    feedback.FeedbackQueryRes(result=[{"id": CALL_ID, "payload": {"emoji": "👍"}}],
                              total_count=1),
    feedback.FeedbackPurgeRes(),
    feedback.FeedbackReplaceRes(id=CALL_ID, created_at=T0, wb_user_id="u", payload={}),
    costs.CostCreateRes(ids=[("gpt-4o", CALL_ID)]),
    costs.CostQueryRes(results=[costs.CostQueryOutput(
        id=CALL_ID, llm_id="gpt-4o", prompt_token_cost=2.5e-6, effective_date=T0)]),
    costs.CostPurgeRes(),
    misc.ActionsExecuteBatchRes(),
    misc.CompletionsCreateRes(response={"choices": [{"message": {"content": "Hello"}}]},
                              weave_call_id=CALL_ID),
    misc.ProjectStatsRes(trace_storage_size_bytes=1, objects_storage_size_bytes=2,
                         tables_storage_size_bytes=3, files_storage_size_bytes=4),
    misc.ThreadSchema(thread_id="t-1", turn_count=3, start_time=T0, last_updated=T0,
                      first_turn_id=CALL_ID, p50_turn_duration_ms=812.5),
    misc.OtelExportRes(partial_success=misc.ExportTracePartialSuccess(
        rejected_spans=1, error_message="span without trace id")),
    misc.EnsureProjectExistsRes(project_name="eval-suite"),
    misc.GraphQLRes(data={"upsertModel": {"model": {"name": "eval-suite"}}}),
]
