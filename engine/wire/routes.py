"""Where each of the seed's methods goes on the wire: HTTP method, path, body and reply types.

``ROUTES`` covers exactly the seed's trace-server methods (WIRE.md §5);
``EXTRA_ROUTES`` holds the wire routes the client needs that are not seed methods (the v2
ingest bodies, batched feedback, the REST op routes weave 0.54.0 uses). Paths are
relative to the trace-server base URL, except those with ``target == "wandb"`` (relative
to the W&B API base URL). ``{entity}``, ``{project}`` and other braces are path parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from engine.wire import calls, costs, feedback, files, labels, misc, objects, query, refs, tables

__all__ = ["Route", "ROUTES", "EXTRA_ROUTES", "SEED_METHODS"]

Body = Literal["json", "multipart", "otlp", "graphql", "none"]
Reply = Literal["json", "jsonl", "bytes"]


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    method: Literal["GET", "POST", "PUT", "DELETE"]
    path: str
    # the body Struct (``None``: no body); for multipart/otlp the Struct the body is made from
    req: Any
    # the reply Struct; for ``reply == "jsonl"`` the type of one line
    res: Any
    body: Body = "json"
    reply: Reply = "json"
    # older servers' paths for the same body and reply, tried on 404 in order
    legacy_paths: tuple[str, ...] = ()
    # the method whose route serves this one when the server lacks it (404)
    fallback: str | None = None
    target: Literal["trace", "wandb"] = "trace"

    @property
    def streaming(self) -> bool:
        """True when the reply is JSONL, one ``res`` per line, to be read lazily."""
        return self.reply == "jsonl"


def _post(path: str, req: Any, res: Any, **kw: Any) -> Route:
    return Route("POST", path, req, res, **kw)


ROUTES: dict[str, Route] = {
    "actions_execute_batch": _post(
        "/actions/execute_batch", misc.ActionsExecuteBatchReq, misc.ActionsExecuteBatchRes),
    "call_end": _post("/call/end", calls.CallEndReq, calls.CallEndRes),
    "call_read": _post("/call/read", query.CallReadReq, query.CallReadRes),
    "call_start": _post("/call/start", calls.CallStartReq, calls.CallStartRes),
    "call_start_batch": _post(
        "/call/upsert_batch", calls.CallCreateBatchReq, calls.CallCreateBatchRes),
    "call_update": _post("/call/update", query.CallUpdateReq, query.CallUpdateRes),
    "calls_delete": _post("/calls/delete", query.CallsDeleteReq, query.CallsDeleteRes),
    # the stream, collected into one reply by the client
    "calls_query": _post(
        "/calls/stream_query", query.CallsQueryReq, query.CallSchema, reply="jsonl"),
    "calls_query_stats": _post(
        "/calls/query_stats", query.CallsQueryStatsReq, query.CallsQueryStatsRes),
    "calls_query_stream": _post(
        "/calls/stream_query", query.CallsQueryReq, query.CallSchema, reply="jsonl"),
    "completions_create": _post(
        "/completions/create", misc.CompletionsCreateReq, misc.CompletionsCreateRes),
    "completions_create_stream": _post(
        "/completions/create_stream", misc.CompletionsCreateReq, misc.CompletionsStreamChunk,
        reply="jsonl"),
    "cost_create": _post("/cost/create", costs.CostCreateReq, costs.CostCreateRes),
    "cost_purge": _post("/cost/purge", costs.CostPurgeReq, costs.CostPurgeRes),
    "cost_query": _post("/cost/query", costs.CostQueryReq, costs.CostQueryRes),
    "ensure_project_exists": _post(
        "/graphql", misc.EnsureProjectExistsReq, misc.EnsureProjectExistsRes,
        body="graphql", target="wandb"),
    "feedback_create": _post(
        "/feedback/create", feedback.FeedbackCreateReq, feedback.FeedbackCreateRes),
    "feedback_purge": _post(
        "/feedback/purge", feedback.FeedbackPurgeReq, feedback.FeedbackPurgeRes),
    "feedback_query": _post(
        "/feedback/query", feedback.FeedbackQueryReq, feedback.FeedbackQueryRes),
    "feedback_replace": _post(
        "/feedback/replace", feedback.FeedbackReplaceReq, feedback.FeedbackReplaceRes),
    "file_content_read": _post(
        "/file/content", files.FileContentReadReq, files.FileContentReadRes,
        reply="bytes", legacy_paths=("/files/content",)),
    "file_create": _post(
        "/file/create", files.FileCreateReq, files.FileCreateRes,
        body="multipart", legacy_paths=("/files/create",)),
    "files_stats": _post(
        "/files/query_stats", files.FilesStatsReq, files.FilesStatsRes,
        legacy_paths=("/files/stats",)),
    "obj_create": _post("/obj/create", objects.ObjCreateReq, objects.ObjCreateRes),
    "obj_delete": _post("/obj/delete", objects.ObjDeleteReq, objects.ObjDeleteRes),
    "obj_read": _post("/obj/read", objects.ObjReadReq, objects.ObjReadRes),
    "objs_query": _post("/objs/query", objects.ObjQueryReq, objects.ObjQueryRes),
    "op_create": _post("/op/create", objects.OpCreateReq, objects.OpCreateRes),
    "op_read": _post("/op/read", objects.OpReadReq, objects.OpReadRes),
    "ops_query": _post("/ops/query", objects.OpQueryReq, objects.OpQueryRes),
    "otel_export": _post(
        "/otel/v1/traces", misc.OtelExportReq, misc.OtelExportRes, body="otlp"),
    "project_stats": _post("/project/stats", misc.ProjectStatsReq, misc.ProjectStatsRes),
    "refs_read_batch": _post("/refs/read_batch", refs.RefsReadBatchReq, refs.RefsReadBatchRes),
    "server_info": Route("GET", "/server_info", None, query.ServerInfoRes, body="none"),
    "table_create": _post("/table/create", tables.TableCreateReq, tables.TableCreateRes),
    "table_query": _post("/table/query", tables.TableQueryReq, tables.TableQueryRes),
    "table_query_stats": _post(
        "/table/query_stats", tables.TableQueryStatsReq, tables.TableQueryStatsRes),
    "table_query_stats_batch": _post(
        "/table/query_stats_batch", tables.TableQueryStatsBatchReq,
        tables.TableQueryStatsBatchRes),
    # the hosted server has no stream route yet: on 404 run table_query and yield its rows
    "table_query_stream": _post(
        "/table/query_stream", tables.TableQueryReq, tables.TableRowSchema,
        reply="jsonl", fallback="table_query"),
    "table_update": _post("/table/update", tables.TableUpdateReq, tables.TableUpdateRes),
    "threads_query_stream": _post(
        "/threads/stream_query", misc.ThreadsQueryReq, misc.ThreadSchema, reply="jsonl"),
}

_OPS_V2 = "/v2/{entity}/{project}/ops"
_VERSION_TAGS = "/objs/{object_id}/versions/{digest}/tags"

EXTRA_ROUTES: dict[str, Route] = {
    "calls_complete": _post(
        "/v2/{entity}/{project}/calls/complete", calls.CallsUpsertCompleteReq,
        calls.CallsUpsertCompleteRes),
    "call_start_v2": _post(
        "/v2/{entity}/{project}/call/start", calls.CallStartV2Req, calls.CallStartV2Res),
    "call_end_v2": _post(
        "/v2/{entity}/{project}/call/end", calls.CallEndV2Req, calls.CallEndV2Res),
    "feedback_create_batch": _post(
        "/feedback/batch/create", feedback.FeedbackCreateBatchReq,
        feedback.FeedbackCreateBatchRes, fallback="feedback_create"),
    "table_create_from_digests": _post(
        "/table/create_from_digests", tables.TableCreateFromDigestsReq,
        tables.TableCreateFromDigestsRes),
    "op_create_v2": _post(_OPS_V2, objects.OpCreateV2Req, objects.OpCreateV2Res),
    # query parameter: eager (bool)
    "op_read_v2": Route(
        "GET", _OPS_V2 + "/{object_id}/versions/{digest}", None, objects.OpReadV2Res,
        body="none"),
    # query parameters: limit, offset
    "op_list_v2": Route("GET", _OPS_V2, None, objects.OpReadV2Res, body="none", reply="jsonl"),
    # query parameter: digests (repeated); none deletes every version
    "op_delete_v2": Route(
        "DELETE", _OPS_V2 + "/{object_id}", None, objects.OpDeleteV2Res, body="none"),
    # tags and aliases (engine.wire.labels): object id and digest in the path
    "obj_add_tags": Route(
        "PUT", _VERSION_TAGS, labels.TagsBody, labels.LabelsRes),
    "obj_remove_tags": _post(_VERSION_TAGS + "/remove", labels.TagsBody, labels.LabelsRes),
    "obj_set_aliases": Route(
        "PUT", "/objs/{object_id}/aliases", labels.AliasesSetBody, labels.LabelsRes),
    "obj_remove_aliases": _post(
        "/objs/{object_id}/aliases/remove", labels.AliasesRemoveBody, labels.LabelsRes),
    # query parameter: project_id
    "tags_list": Route("GET", "/tags", None, labels.TagsListRes, body="none"),
    "aliases_list": Route("GET", "/aliases", None, labels.AliasesListRes, body="none"),
}

SEED_METHODS: frozenset[str] = frozenset(ROUTES)
"""The trace-server methods of the seed's ``RemoteHTTPTraceServer`` (without the
client-side helpers ``from_env``, ``set_auth``, ``get_call_processor``)."""
