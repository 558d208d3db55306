"""Project stats, threads, OTLP export, actions and completions.

- ``/threads/stream_query``: threads aggregated from their turn calls (calls whose
  ``turn_id`` is their own ``id``), one JSONL line per thread.
- ``/otel/v1/traces``: an OTLP ``ExportTraceServiceRequest`` as JSON, or as protobuf when
  ``opentelemetry-proto`` is importable (else 415 saying so); the project is the
  ``project_id`` header. Each span is stored as a complete call (id = span id, op name =
  span name, attributes flattened, the span itself in ``otel_dump``), so a resent export
  rewrites the same calls.
- ``/actions/execute_batch``: checks the action object and the calls exist and records
  one run per (action, call); no action code runs here.
- ``/completions/create`` and ``/completions/create_stream``: a deterministic local echo
  model (the reply is the last user message; ``created`` is 0), so the client path works
  offline; ``track_llm_call`` stores the completion as a call.
"""

from __future__ import annotations

import datetime as _dt
import statistics
from typing import Any

import msgspec
from aiohttp import web

from engine.server._body import ApiError, read_body
from engine.server._digest import value_digest
from engine.server._query_expr import order_key
from engine.server._reply import now_us, ok, page_of, project_of, stream_jsonl
from engine.server._routes_refs import parse_ref, resolve
from engine.server._rows import Page, Selection, from_us, to_us
from engine.server._sqlite_objects import (
    more_of,
    q_record_action_runs,
    q_storage_bytes,
    q_thread_turns,
)
from engine.server._state import state_of
from engine.wire._codec import uuid7
from engine.wire.calls import CompletedCallSchemaForInsert
from engine.wire.misc import (
    ActionsExecuteBatchReq,
    CompletionsCreateReq,
    ProjectStatsReq,
    ThreadsQueryReq,
)
from engine.wire.query import CallsFilter

routes = web.RouteTableDef()
MAX_THREAD_TURNS = 100_000
MAX_IDS = 500
_json = msgspec.json.Encoder()


# -- project stats ------------------------------------------------------------------------


@routes.post("/project/stats")
async def project_stats(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, ProjectStatsReq)
    project_of(req.project_id)
    more = more_of(request)
    kinds = (("trace", req.include_trace_storage_size and more.has_calls),
             ("objects", req.include_object_storage_size), ("tables", req.include_table_storage_size),
             ("files", req.include_file_storage_size))  # fmt: skip
    sizes = {
        f"{kind}_storage_size_bytes": await more.run(q_storage_bytes, kind, req.project_id)
        if on
        else 0
        for kind, on in kinds
    }
    return ok(sizes)


# -- threads ------------------------------------------------------------------------------

_THREAD_SORT = frozenset(
    {"thread_id", "turn_count", "start_time", "last_updated", "p50_turn_duration_ms",
     "p99_turn_duration_ms"}
)  # fmt: skip


def _percentile(durations_ms: list[float], q: float) -> float | None:
    if not durations_ms:
        return None
    if len(durations_ms) == 1:
        return durations_ms[0]
    return statistics.quantiles(durations_ms, n=100, method="inclusive")[int(q) - 1]


def _thread(thread_id: str, turns: list[tuple]) -> dict[str, Any]:
    """Turns ``(thread_id, id, started_us, ended_us)`` in start order → a ThreadSchema."""
    durations = [(e - s) / 1000 for _, _, s, e in turns if e is not None and s is not None]
    return {
        "thread_id": thread_id, "turn_count": len(turns),
        "start_time": from_us(turns[0][2]),
        "last_updated": from_us(max(e if e is not None else s for _, _, s, e in turns)),
        "first_turn_id": turns[0][1], "last_turn_id": turns[-1][1],
        "p50_turn_duration_ms": _percentile(sorted(durations), 50),
        "p99_turn_duration_ms": _percentile(sorted(durations), 99),
    }  # fmt: skip


def _threads(rows: list[tuple]) -> list[dict[str, Any]]:
    grouped: dict[str, list[tuple]] = {}
    for row in rows:
        grouped.setdefault(row[0], []).append(row)
    return [_thread(thread_id, turns) for thread_id, turns in grouped.items()]


def _thread_filter(threads: list[dict[str, Any]], req: ThreadsQueryReq) -> list[dict[str, Any]]:
    flt = req.filter
    if flt is None:
        return threads
    after = flt.after_datetime and from_us(to_us(flt.after_datetime))
    before = flt.before_datetime and from_us(to_us(flt.before_datetime))
    return [
        t for t in threads
        if (after is None or t["start_time"] > after) and (before is None or t["last_updated"] < before)
    ]  # fmt: skip


def _sort_threads(threads: list[dict[str, Any]], req: ThreadsQueryReq) -> list[dict[str, Any]]:
    for i, sort in enumerate(reversed(req.sort_by or [])):
        if sort.field not in _THREAD_SORT:
            index = len(req.sort_by or []) - 1 - i
            raise ApiError(422, f"sort_by[{index}].field: cannot sort threads by {sort.field!r}; "
                                f"sortable: {', '.join(sorted(_THREAD_SORT))}")  # fmt: skip
        threads.sort(
            key=lambda t: order_key(_sortable(t[sort.field])), reverse=sort.direction == "desc"
        )
    return threads


def _sortable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, _dt.datetime) else value


@routes.post("/threads/stream_query")
async def threads_stream_query(request: web.Request) -> web.StreamResponse:
    req = await state_of(request).decode(request, ThreadsQueryReq)
    project_of(req.project_id)
    thread_ids = req.filter.thread_ids if req.filter else None
    if thread_ids is not None and len(thread_ids) > MAX_IDS:
        raise ApiError(422, f"filter.thread_ids: at most {MAX_IDS} ids")
    limit, offset = page_of(req.limit, req.offset)
    more = more_of(request)
    rows = (
        await more.run(q_thread_turns, req.project_id, thread_ids, MAX_THREAD_TURNS)
        if more.has_calls else []
    )  # fmt: skip
    threads = _sort_threads(_thread_filter(_threads(rows), req), req)[offset : offset + limit]

    async def chunks():
        yield threads

    return await stream_jsonl(request, chunks())


# -- OTLP export --------------------------------------------------------------------------


def _any_value(value: dict[str, Any]) -> Any:
    """An OTLP JSON ``AnyValue`` as a plain value."""
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


def _json_spans(body: bytes) -> list[dict[str, Any]]:
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"malformed OTLP JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("resourceSpans", []), list):
        raise ApiError(422, "resourceSpans: expected a list (OTLP ExportTraceServiceRequest)")
    return [span for rs in doc.get("resourceSpans", []) for ss in rs.get("scopeSpans", [])
            for span in ss.get("spans", [])]  # fmt: skip


def _protobuf_spans(body: bytes) -> list[dict[str, Any]]:
    try:
        from google.protobuf.json_format import MessageToDict
        from google.protobuf.message import DecodeError
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
    except ImportError:
        raise ApiError(
            415, "protobuf OTLP needs the opentelemetry-proto package on the server; send OTLP JSON"
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
        started_ns, ended_ns = int(span["startTimeUnixNano"]), int(span["endTimeUnixNano"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ApiError(422, f"spans[{i}]: missing or invalid {exc}") from None
    attributes = {a["key"]: _any_value(a.get("value", {})) for a in span.get("attributes", [])}
    status = span.get("status") or {}
    error = status.get("message") if status.get("code") in (2, "STATUS_CODE_ERROR") else None
    return CompletedCallSchemaForInsert(
        project_id=project_id, id=span_id, op_name=str(span.get("name") or "otel.span"),
        trace_id=trace_id, parent_id=span.get("parentSpanId") or None,
        started_at=from_us(started_ns // 1000), ended_at=from_us(ended_ns // 1000),
        attributes=attributes, inputs={}, otel_dump=span, summary={}, exception=error,
    )  # fmt: skip


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
    await state.store.write_calls([], [], calls)
    state.counters.calls_complete += len(calls)
    return ok({})


# -- actions ------------------------------------------------------------------------------


async def _missing_calls(request: web.Request, project_id: str, call_ids: list[str]) -> list[str]:
    selection = Selection(project_id, CallsFilter(call_ids=call_ids))
    rows = await state_of(request).store.select_calls(selection, Page(limit=len(call_ids)))
    found = {row[1] for row in rows}
    return [cid for cid in call_ids if cid not in found]


@routes.post("/actions/execute_batch")
async def actions_execute_batch(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, ActionsExecuteBatchReq)
    project_of(req.project_id)
    call_ids = list(dict.fromkeys(req.call_ids))
    if not call_ids or len(call_ids) > MAX_IDS:
        raise ApiError(422, f"call_ids: between 1 and {MAX_IDS} ids, got {len(call_ids)}")
    ref = parse_ref(req.action_ref, "action_ref")
    if ref.kind != "object" or ref.project_id != req.project_id:
        raise ApiError(
            422, f"action_ref: {req.action_ref!r} is not an object of {req.project_id!r}"
        )
    if await resolve(request, ref, "action_ref") is None:
        raise ApiError(404, f"action_ref: {req.action_ref!r} not found")
    missing = await _missing_calls(request, req.project_id, call_ids)
    if missing:
        raise ApiError(404, f"call_ids: {missing[:5]} ({len(missing)}) not found")
    runs = [(req.project_id, req.action_ref, cid, now_us()) for cid in call_ids]
    await more_of(request).run(q_record_action_runs, runs)
    return ok({})


# -- completions: a deterministic echo model ----------------------------------------------

_ECHO_OP = "engine.echo_completion"


def _text(content: Any) -> str:
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _echo(req: CompletionsCreateReq) -> dict[str, Any]:
    """An OpenAI chat completion whose answer is the last user message, same for same input."""
    messages = [m for m in req.inputs.messages if isinstance(m, dict)]
    user = [_text(m.get("content")) for m in messages if m.get("role") == "user"]
    answer = user[-1] if user else ""
    prompt_tokens = sum(len(_text(m.get("content")).split()) for m in messages)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(answer.split()),
             "total_tokens": prompt_tokens + len(answer.split())}  # fmt: skip
    return {
        "id": "chatcmpl-" + value_digest(msgspec.to_builtins(req.inputs))[:24],
        "object": "chat.completion", "created": 0, "model": req.inputs.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                     "finish_reason": "stop"}],
        "usage": usage,
    }  # fmt: skip


async def _track(request: web.Request, req: CompletionsCreateReq, response: dict) -> str | None:
    if req.track_llm_call is False:
        return None
    call_id, at = uuid7(), from_us(now_us())
    usage = {**response["usage"], "requests": 1}
    call = CompletedCallSchemaForInsert(
        project_id=req.project_id, id=call_id, op_name=_ECHO_OP, trace_id=req.trace_id or uuid7(),
        parent_id=req.parent_id, thread_id=req.conversation_id, started_at=at, ended_at=at,
        attributes={"engine": {"echo_model": True}}, inputs=msgspec.to_builtins(req.inputs),
        output=response, summary={"usage": {req.inputs.model: usage}}, wb_user_id=req.wb_user_id,
    )  # fmt: skip
    await state_of(request).store.write_calls([], [], [call])
    return call_id


async def _completion_request(request: web.Request) -> CompletionsCreateReq:
    req = await state_of(request).decode(request, CompletionsCreateReq)
    project_of(req.project_id)
    if not req.inputs.model:
        raise ApiError(422, "inputs.model: must not be empty")
    return req


@routes.post("/completions/create")
async def completions_create(request: web.Request) -> web.Response:
    req = await _completion_request(request)
    response = _echo(req)
    call_id = await _track(request, req, response)
    return ok({"response": response, "weave_call_id": call_id, "trace_id": req.trace_id})


def _chunks(response: dict[str, Any]) -> list[dict[str, Any]]:
    """The completion as OpenAI stream chunks: one per word, then the finish with usage."""
    words = response["choices"][0]["message"]["content"].split(" ")
    base = {"id": response["id"], "object": "chat.completion.chunk", "created": 0,
            "model": response["model"]}  # fmt: skip
    pieces = [w + " " for w in words[:-1]] + words[-1:]
    chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": p} if i == 0
               else {"content": p}, "finish_reason": None}]} for i, p in enumerate(pieces)]  # fmt: skip
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                   "usage": response["usage"]})  # fmt: skip
    return chunks


@routes.post("/completions/create_stream")
async def completions_create_stream(request: web.Request) -> web.StreamResponse:
    req = await _completion_request(request)
    response = _echo(req)
    call_id = await _track(request, req, response)

    async def lines():
        if call_id is not None:
            yield [{"_meta": {"weave_call_id": call_id}}]
        for chunk in _chunks(response):
            yield [chunk]

    return await stream_jsonl(request, lines())
