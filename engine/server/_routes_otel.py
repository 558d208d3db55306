"""``/otel/v1/traces``: OTLP span export stored as calls.

An OTLP ``ExportTraceServiceRequest`` as JSON, or as protobuf when
``opentelemetry-proto`` is importable (the ``otel`` extra; else 415 saying so); the project is the
``project_id`` header. Each span is stored as a complete call (id = span id, op name =
span name, attributes flattened, the span itself in ``otel_dump``), so a resent export
rewrites the same calls.
"""

from __future__ import annotations

import datetime
from typing import Any

import msgspec
from aiohttp import web

from engine.server._body import ApiError, decode_json, read_body
from engine.server._limits import MAX_TIME_US, MIN_TIME_US
from engine.server._reply import ok, project_of
from engine.server._rows import from_us
from engine.server._state import state_of
from engine.wire.calls import CompletedCallSchemaForInsert

routes = web.RouteTableDef()


def _any_value(value: dict[str, Any]) -> Any:
    """An OTLP JSON ``AnyValue`` as a plain value (a malformed one raises TypeError or
    AttributeError, which the caller answers with a 422)."""
    if "arrayValue" in value:
        return [_any_value(v) for v in value["arrayValue"].get("values", [])]
    if "kvlistValue" in value:
        return {
            kv["key"]: _any_value(kv.get("value", {}))
            for kv in value["kvlistValue"].get("values", [])
        }
    for key in ("stringValue", "boolValue", "doubleValue", "bytesValue"):
        if key in value:
            return value[key]
    return int(value["intValue"]) if "intValue" in value else None


class _ScopeSpans(msgspec.Struct):
    spans: list[dict[str, Any]] = []


class _ResourceSpans(msgspec.Struct):
    scopeSpans: list[_ScopeSpans] = []  # noqa: N815  (the OTLP JSON name)


class _ExportRequest(msgspec.Struct):
    resourceSpans: list[_ResourceSpans] = []  # noqa: N815


def _json_spans(body: bytes) -> list[dict[str, Any]]:
    """The spans of an OTLP JSON export; a body of another shape is a 422 naming where."""
    doc = decode_json(body, _ExportRequest)
    return [span for rs in doc.resourceSpans for ss in rs.scopeSpans for span in ss.spans]


def _protobuf_spans(body: bytes) -> list[dict[str, Any]]:
    try:
        from google.protobuf.json_format import MessageToDict
        from google.protobuf.message import DecodeError
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
    except ImportError:
        raise ApiError(
            415,
            "protobuf OTLP needs the opentelemetry-proto package on the server "
            "(pip install 'engine[otel]'); or send OTLP JSON",
        ) from None
    message = trace_service_pb2.ExportTraceServiceRequest()
    try:
        message.ParseFromString(body)
    except DecodeError as exc:
        raise ApiError(400, f"malformed OTLP protobuf: {exc}") from None
    spans = []
    for rs in message.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                as_json = MessageToDict(span)  # ids come out base64: OTLP JSON wants hex
                as_json.update(traceId=span.trace_id.hex(), spanId=span.span_id.hex(),
                               parentSpanId=span.parent_span_id.hex())  # fmt: skip
                spans.append(as_json)
    return spans


def _span_call(project_id: str, span: dict[str, Any], i: int) -> CompletedCallSchemaForInsert:
    try:
        trace_id, span_id = str(span["traceId"]), str(span["spanId"])
        started, ended = (_span_time(span, name, i) for name in ("startTimeUnixNano", "endTimeUnixNano"))
        attributes = {str(a["key"]): _any_value(a.get("value", {})) for a in span.get("attributes", [])}
        status = span.get("status") or {}
        error = status.get("message") if status.get("code") in (2, "STATUS_CODE_ERROR") else None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ApiError(422, f"spans[{i}]: missing or invalid {type(exc).__name__}: {exc}") from None
    return CompletedCallSchemaForInsert(
        project_id=project_id, id=span_id, op_name=str(span.get("name") or "otel.span"),
        trace_id=trace_id, parent_id=span.get("parentSpanId") or None,
        started_at=started, ended_at=ended, attributes=attributes, inputs={},
        otel_dump=span, summary={}, exception=error if isinstance(error, str) else None,
    )  # fmt: skip


def _span_time(span: dict[str, Any], name: str, i: int) -> datetime.datetime:
    """A span's ``*UnixNano`` as a UTC datetime: an int, or its decimal text (OTLP JSON)."""
    us = int(span[name]) // 1000
    if not MIN_TIME_US <= us <= MAX_TIME_US:
        raise ApiError(422, f"spans[{i}].{name}: {span[name]} is outside 0001..9999 in UTC")
    return from_us(us)


@routes.post("/otel/v1/traces")
async def otel_export(request: web.Request) -> web.Response:
    state = state_of(request)
    project_id = project_of(request.headers.get("project_id", ""), "project_id header")
    body = await read_body(request, state.max_body_bytes)
    if request.content_type == "application/x-protobuf":
        spans = _protobuf_spans(body)
    elif request.content_type == "application/json":
        spans = _json_spans(body)
    else:
        raise ApiError(415, f"Content-Type {request.content_type!r}: send application/json or "
                            "application/x-protobuf")  # fmt: skip
    calls = [_span_call(project_id, span, i) for i, span in enumerate(spans)]
    await state.store.insert_calls([], [], calls)
    state.counters.calls_complete += len(calls)
    return ok({})
