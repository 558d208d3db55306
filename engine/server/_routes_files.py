"""Files: multipart upload, content by digest, project totals — newer and older paths.

``weave.init()`` publishes each op's code here before its calls can name the op, so these
routes answer with every store (the ``count`` store keeps files in memory). Content is
addressed by weave's file digest; uploading the same bytes again stores nothing new.
"""

from __future__ import annotations

from aiohttp import BodyPartReader, web

from engine.server._body import ApiError
from engine.server._digest import bytes_digest
from engine.server._reply import not_found, ok, project_of
from engine.server._state import state_of
from engine.wire.files import FileContentReadReq, FilesStatsReq

routes = web.RouteTableDef()


@routes.post("/file/create")
@routes.post("/files/create")
async def file_create(request: web.Request) -> web.Response:
    """Multipart text fields ``project_id`` (and ``expected_digest``), file part ``file``."""
    state = state_of(request)
    fields = await read_multipart(request, state.max_body_bytes)
    if "file" not in fields:
        raise ApiError(422, "file: multipart part 'file' is required")
    project_id = project_of(fields.get("project_id", b"").decode(errors="replace"))
    digest = bytes_digest(fields["file"])
    expected = fields.get("expected_digest", b"").decode(errors="replace")
    if expected and expected != digest:
        raise ApiError(409, f"expected_digest: {expected!r} != stored digest {digest!r}")
    await state.store.put_file(project_id, digest, fields["file"])
    return ok({"digest": digest})


async def read_multipart(request: web.Request, max_body_bytes: int) -> dict[str, bytes]:
    """Every named part of a ``multipart/form-data`` body, at most ``max_body_bytes`` in all."""
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


@routes.post("/file/content")
@routes.post("/files/content")
async def file_content(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, FileContentReadReq)
    content = await state_of(request).store.read_file(project_of(req.project_id), req.digest)
    if content is None:
        raise not_found(f"file {req.digest!r} in project {req.project_id!r}")
    return web.Response(body=content, content_type="application/octet-stream")


@routes.post("/files/query_stats")
@routes.post("/files/stats")
async def files_stats(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, FilesStatsReq)
    total = await state_of(request).store.storage_bytes(project_of(req.project_id), "files")
    return ok({"total_size_bytes": total})
