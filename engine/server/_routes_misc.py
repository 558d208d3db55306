"""Handshake and introspection routes, and the object/file creates weave needs to trace ops.

``weave.init()`` publishes each op's code (``POST /file/create``, then ``POST /obj/create``)
before its calls can name the op by reference; without answers to those two, an
unmodified weave client never sends a call. They are stored, not interpreted.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import msgspec
from aiohttp import BodyPartReader, web

from engine import __version__
from engine.server._body import ACCEPTED_ENCODINGS, ApiError
from engine.server._state import check_project_id, state_of
from engine.wire.query import ServerInfoRes

routes = web.RouteTableDef()
_json = msgspec.json.Encoder()
# the oldest weave client this server accepts: it does not turn any client away
MIN_WEAVE_VERSION = "0.0.1"


def digest_of(data: bytes) -> str:
    """Weave's content digest: urlsafe base64 of SHA-256, ``-``→``X``, ``_``→``Y``, unpadded."""
    encoded = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
    return encoded.replace("-", "X").replace("_", "Y").rstrip("=")


@routes.get("/server_info")
async def server_info(request: web.Request) -> web.Response:
    info = ServerInfoRes(
        min_required_weave_python_version=MIN_WEAVE_VERSION,
        trace_server_version=f"engine-{__version__}",
        accepts_encodings=list(ACCEPTED_ENCODINGS),
    )
    return web.Response(body=_json.encode(info), content_type="application/json")


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "store": state_of(request).store.kind})


@routes.get("/stats")
async def stats(request: web.Request) -> web.Response:
    state = state_of(request)
    body = {"store": state.store.kind, **msgspec.structs.asdict(state.counters)}
    return web.json_response(body)


class _ObjSchemaForInsert(msgspec.Struct, kw_only=True):
    project_id: str
    object_id: str
    val: Any
    builtin_object_class: str | None = None
    expected_digest: str | None = None
    wb_user_id: str | None = None


class _ObjCreateReq(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    obj: _ObjSchemaForInsert


def _check_expected(expected: str | None, actual: str, field: str) -> None:
    if expected is not None and expected != actual:
        raise ApiError(422, f"{field}: expected digest {expected!r} but content has {actual!r}")


@routes.post("/obj/create")
async def obj_create(request: web.Request) -> web.Response:
    state = state_of(request)
    obj = (await state.decode(request, _ObjCreateReq)).obj
    check_project_id(obj.project_id, "obj.project_id")
    val_json = _json.encode(obj.val)
    digest = digest_of(msgspec.json.encode(obj.val, order="sorted"))
    await state.store.put_object(obj.project_id, obj.object_id, digest, val_json.decode())
    return web.json_response({"digest": digest, "object_id": obj.object_id})


@routes.post("/file/create")
async def file_create(request: web.Request) -> web.Response:
    """Multipart fields ``project_id`` and ``expected_digest``, file part ``file``."""
    state = state_of(request)
    fields = await _read_multipart(request, state.max_body_bytes)
    project_id = fields.get("project_id", b"").decode()
    if "file" not in fields:
        raise ApiError(422, "file: multipart part 'file' is required")
    check_project_id(project_id, "project_id")
    digest = digest_of(fields["file"])
    expected = fields.get("expected_digest")
    _check_expected(expected.decode() if expected else None, digest, "expected_digest")
    await state.store.put_file(project_id, digest, fields["file"])
    return web.json_response({"digest": digest})


async def _read_multipart(request: web.Request, max_body_bytes: int) -> dict[str, bytes]:
    declared = request.content_length
    if declared is not None and declared > max_body_bytes:
        raise ApiError(413, f"Content-Length {declared} exceeds the {max_body_bytes}-byte limit")
    try:
        reader = await request.multipart()
    except (AssertionError, ValueError, KeyError) as exc:
        raise ApiError(400, f"expected a multipart/form-data body: {exc}") from None
    fields: dict[str, bytes] = {}
    total_bytes = 0
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader) or not part.name:
            raise ApiError(400, "multipart body holds an unnamed or nested part")
        data = bytearray()
        while chunk := await part.read_chunk():
            data += chunk
            total_bytes += len(chunk)
            if total_bytes > max_body_bytes:
                raise ApiError(413, f"request body exceeds the {max_body_bytes}-byte limit")
        fields[part.name] = bytes(data)
    return fields
