"""The rest of the surface (WIRE.md §5): actions, completions, project stats, threads,
OTLP export and project creation.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Literal

from engine.wire._base import Nested, Request, Response
from engine.wire.query import SortBy

__all__ = [
    "ActionsExecuteBatchReq",
    "ActionsExecuteBatchRes",
    "CompletionsCreateRequestInputs",
    "InferenceRoute",
    "CompletionsCreateReq",
    "CompletionsCreateRes",
    "CompletionsStreamChunk",
    "ProjectStatsReq",
    "ProjectStatsRes",
    "ThreadsQueryFilter",
    "ThreadsQueryReq",
    "ThreadSchema",
    "OtelExportReq",
    "ExportTracePartialSuccess",
    "OtelExportRes",
    "EnsureProjectExistsReq",
    "EnsureProjectExistsRes",
    "GraphQLReq",
    "GraphQLRes",
]


class ActionsExecuteBatchReq(Request, kw_only=True):
    project_id: str
    # the action object to run, e.g. "weave:///entity/project/object/my_scorer:digest"
    action_ref: str
    call_ids: list[str]
    wb_user_id: str | None = None


class ActionsExecuteBatchRes(Response, kw_only=True):
    pass


class CompletionsCreateRequestInputs(Nested, kw_only=True):
    """LiteLLM-style chat completion arguments."""

    model: str
    messages: list[Any] = []
    timeout: float | str | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stop: str | list[Any] | None = None
    max_completion_tokens: int | None = None
    max_tokens: int | None = None
    modalities: list[Any] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stream: bool | None = None
    logit_bias: dict[str, Any] | None = None
    user: str | None = None
    response_format: Any = None
    seed: int | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    parallel_tool_calls: bool | None = None
    extra_headers: dict[str, Any] | None = None
    functions: list[Any] | None = None
    function_call: str | None = None
    api_version: str | None = None
    reasoning_effort: str | None = None
    # a stored prompt ref whose messages go before ``messages``
    prompt: str | None = None
    # values for "{name}" placeholders in the prompt and messages
    template_vars: dict[str, Any] | None = None
    # JSON of Vertex AI service-account credentials; never stored in traces
    vertex_credentials: str | None = None


class InferenceRoute(Nested, kw_only=True):
    base_url: str
    connection: str
    connection_type: Literal["dedicated"]


class CompletionsCreateReq(Request, kw_only=True):
    """Body of ``/completions/create`` and ``/completions/create_stream``."""

    project_id: str
    inputs: CompletionsCreateRequestInputs
    wb_user_id: str | None = None
    # record the completion as a call in the project
    track_llm_call: bool | None = True
    conversation_id: str | None = None
    conversation_name: str | None = None
    inference_route: InferenceRoute | None = None
    parent_id: str | None = None
    source: str | None = None
    trace_id: str | None = None


class CompletionsCreateRes(Response, kw_only=True):
    response: dict[str, Any]
    weave_call_id: str | None = None
    conversation_id: str | None = None
    span_id: str | None = None
    trace_id: str | None = None


CompletionsStreamChunk = dict[str, Any]
"""One JSONL line of ``/completions/create_stream``: a tracked call opens with
``{"_meta": {"weave_call_id": …}}``, a failure is ``{"error": …}``, every other line is a
provider chunk passed through as it arrived."""


class ProjectStatsReq(Request, kw_only=True):
    project_id: str
    include_trace_storage_size: bool | None = True
    include_object_storage_size: bool | None = True
    include_table_storage_size: bool | None = True
    include_file_storage_size: bool | None = True


class ProjectStatsRes(Response, kw_only=True):
    trace_storage_size_bytes: int
    objects_storage_size_bytes: int
    tables_storage_size_bytes: int
    files_storage_size_bytes: int


class ThreadsQueryFilter(Nested, kw_only=True):
    # threads whose first turn started after this instant
    after_datetime: _dt.datetime | None = None
    # threads whose last turn ended before this instant
    before_datetime: _dt.datetime | None = None
    thread_ids: list[str] | None = None


class ThreadsQueryReq(Request, kw_only=True):
    """Body of ``/threads/stream_query``: threads aggregated over their turn calls."""

    project_id: str
    filter: ThreadsQueryFilter | None = None
    limit: int | None = None
    offset: int | None = None
    # by thread_id, turn_count, start_time, last_updated, p50/p99_turn_duration_ms
    sort_by: list[SortBy] | None = None


class ThreadSchema(Response, kw_only=True):
    """One JSONL line of ``/threads/stream_query``."""

    thread_id: str
    turn_count: int
    start_time: _dt.datetime
    last_updated: _dt.datetime
    first_turn_id: str | None = None
    last_turn_id: str | None = None
    p50_turn_duration_ms: float | None = None
    p99_turn_duration_ms: float | None = None


class OtelExportReq(Request, kw_only=True):
    """The server interface's form of an OTLP export.

    On the wire ``POST /otel/v1/traces`` carries ``traces`` (an OTLP
    ``ExportTraceServiceRequest``) as the whole body — protobuf
    (``application/x-protobuf``) or OTLP JSON — and ``project_id`` in a header of that name.
    """

    project_id: str
    traces: Any
    wb_run_id: str | None = None
    wb_user_id: str | None = None


class ExportTracePartialSuccess(Response, kw_only=True):
    rejected_spans: int
    error_message: str


class OtelExportRes(Response, kw_only=True):
    # absent, or rejected_spans == 0: every span was accepted
    partial_success: ExportTracePartialSuccess | None = None


class EnsureProjectExistsReq(Request, kw_only=True):
    """The arguments of ``ensure_project_exists(entity, project)`` (not a trace-server body:
    the client sends an ``upsertModel`` :class:`GraphQLReq` to the W&B API)."""

    entity: str
    project: str


class EnsureProjectExistsRes(Response, kw_only=True):
    project_name: str


class GraphQLReq(Request, kw_only=True):
    """Body of ``POST <W&B base URL>/graphql`` (``viewer``, ``upsertModel``)."""

    query: str
    variables: dict[str, Any] = {}
    operationName: str | None = None  # noqa: N815 — GraphQL's own spelling


class GraphQLRes(Response, kw_only=True):
    data: dict[str, Any] | None = None
    errors: list[dict[str, Any]] | None = None
