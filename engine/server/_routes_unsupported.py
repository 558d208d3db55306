"""Routes of weave 0.54.0's client that ``engine serve`` does not implement: each answers
400 with a JSON reason naming the client method and why, instead of the router's 404 (a
404 reads as "no such object" to weave's client). Not a 501: weave's client retries every
5xx with backoff, and asking again will not help. ``docs/server-fidelity.md`` lists them.
"""

from __future__ import annotations

from aiohttp import web

from engine.server._body import ApiError

routes = web.RouteTableDef()

_NEEDS_MODEL = "it runs an LLM, and engine serve calls no model provider"
_NOT_STORED = "engine serve does not store {what}"
# (verb, path, client method, why)
UNSUPPORTED = (
    ("POST", "/evaluations/evaluate_model", "evaluate_model", _NEEDS_MODEL),
    ("POST", "/evaluations/status", "evaluation_status", "evaluate_model runs nowhere here, so no run has a status"),
    ("POST", "/evaluations/rescore", "rescore", _NEEDS_MODEL),
    ("POST", "/calls/score", "calls_score", _NEEDS_MODEL),
    ("POST", "/image/create", "image_create", _NEEDS_MODEL),
    ("PUT", "/v2/{entity}/{project}/runtimes/{runtime_name}", "custom_runtime_apply",
     "engine serve runs no custom runtimes"),
    ("POST", "/calls/stats", "call_stats", "time-bucketed call statistics are not computed"),
    ("POST", "/feedback/stats", "feedback_stats", "time-bucketed feedback statistics are not computed"),
    ("POST", "/feedback/aggregate", "feedback_aggregate", "feedback aggregation is not computed"),
    ("POST", "/feedback/payload_schema", "feedback_payload_schema", "payload schemas are not inferred"),
    ("POST", "/files/resolve_url", "files_resolve_url", "files are served by /file/content, not by URL"),
    ("POST", "/service/projects_info", "projects_info", "there is no W&B project service here"),
    ("POST", "/project/ingest_sampling_settings/read", "project_ingest_sampling_settings_read",
     _NOT_STORED.format(what="sampling settings")),
    ("GET", "/project/sensitive_data_settings", "project_sensitive_data_settings",
     _NOT_STORED.format(what="sensitive-data settings")),
    ("POST", "/dataset_sources/link", "dataset_sources_link", _NOT_STORED.format(what="dataset sources")),
    ("POST", "/dataset_sources/link_delete", "dataset_sources_link_delete",
     _NOT_STORED.format(what="dataset sources")),
    ("POST", "/dataset_sources/query", "dataset_sources_query", _NOT_STORED.format(what="dataset sources")),
    ("POST", "/dataset_sources/source_datasets_query", "source_datasets_query",
     _NOT_STORED.format(what="dataset sources")),
    ("POST", "/annotation_queues", "annotation_queue_create", _NOT_STORED.format(what="annotation queues")),
    ("POST", "/annotation_queues/query", "annotation_queues_query_stream", _NOT_STORED.format(what="annotation queues")),
    ("POST", "/annotation_queues/stats", "annotation_queues_stats", _NOT_STORED.format(what="annotation queues")),
    ("GET", "/annotation_queues/{queue_id}", "annotation_queue_read", _NOT_STORED.format(what="annotation queues")),
    ("PUT", "/annotation_queues/{queue_id}", "annotation_queue_update", _NOT_STORED.format(what="annotation queues")),
    ("DELETE", "/annotation_queues/{queue_id}", "annotation_queue_delete", _NOT_STORED.format(what="annotation queues")),
    ("POST", "/annotation_queues/{queue_id}/items", "annotation_queue_add_calls",
     _NOT_STORED.format(what="annotation queues")),
    ("POST", "/annotation_queues/{queue_id}/items/query", "annotation_queue_items_query",
     _NOT_STORED.format(what="annotation queues")),
    ("POST", "/annotation_queues/{queue_id}/items/{item_id}/progress", "annotator_queue_items_progress_update",
     _NOT_STORED.format(what="annotation queues")),
    ("POST", "/agents/query", "agent_agents_query", _NOT_STORED.format(what="agent spans")),
    ("POST", "/agents/search", "agent_search", _NOT_STORED.format(what="agent spans")),
    ("POST", "/agents/agent-versions/query", "agent_versions_query", _NOT_STORED.format(what="agent spans")),
    ("POST", "/agents/spans/query", "agent_spans_query", _NOT_STORED.format(what="agent spans")),
    ("POST", "/agents/spans/stats", "agent_spans_stats", _NOT_STORED.format(what="agent spans")),
    ("POST", "/agents/spans/custom-attrs/schema", "agent_custom_attrs_schema", _NOT_STORED.format(what="agent spans")),
    ("POST", "/agents/traces/chat", "agent_traces_chat", _NOT_STORED.format(what="agent spans")),
    ("POST", "/agents/conversations/chat", "agent_conversation_chat", _NOT_STORED.format(what="agent spans")),
    ("POST", "/agents/conversations/spans", "agent_conversation_spans", _NOT_STORED.format(what="agent spans")),
    ("POST", "/v2/{entity}/{project}/eval_results/query", "eval_results_query",
     "evaluation results are not aggregated"),
)  # fmt: skip


def _refuse(method: str, why: str):
    async def handler(request: web.Request) -> web.Response:
        raise ApiError(400, f"{method} is not implemented by engine serve: {why}")

    return handler


for _verb, _path, _method, _why in UNSUPPORTED:
    routes.route(_verb, _path)(_refuse(_method, _why))
