"""``/completions/create`` and ``/completions/create_stream``: a deterministic local echo
model (the reply is the last user message; ``created`` is 0), so the client path works
offline; ``track_llm_call`` stores the completion as a call.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from engine.server._body import ApiError
from engine.server._digest import value_digest
from engine.server._reply import now_us, ok, project_of, stream_jsonl
from engine.server._rows import from_us
from engine.server._state import state_of
from engine.wire._codec import uuid7
from engine.wire.calls import CompletedCallSchemaForInsert
from engine.wire.misc import CompletionsCreateReq

routes = web.RouteTableDef()


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
    await state_of(request).store.insert_calls([], [], [call])
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
