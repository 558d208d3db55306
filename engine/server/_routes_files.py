"""Files: multipart upload, content by digest, project totals — newer and older paths.

``weave.init()`` publishes each op's code here before its calls can name the op, so these
routes answer with every store (the ``count`` store keeps files in memory). Content is
addressed by weave's file digest; uploading the same bytes again stores nothing new.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import BodyPartReader, web

from engine.server._auth import CURRENT_GRANT
from engine.server._body import ApiError, BodyPace
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
    fields = await read_multipart(request, state.max_body_bytes, _check_writable)
    if "file" not in fields:
        raise ApiError(422, "file: multipart part 'file' is required")
    project_id = project_of(fields.get("project_id", b"").decode(errors="replace"))
    digest = bytes_digest(fields["file"])
    expected = fields.get("expected_digest", b"").decode(errors="replace")
    if expected and expected != digest:
        raise ApiError(409, f"expected_digest: {expected!r} != stored digest {digest!r}")
    await state.store.put_file(project_id, digest, fields["file"])
    return ok({"digest": digest})


def _check_writable(name: str, value: bytes) -> None:
    """A key that may not write the project is refused as soon as its ``project_id`` part
    is read (weave sends it first), before the file's bytes are; the store checks again."""
    if name == "project_id" and (grant := CURRENT_GRANT.get()) is not None:
        grant.check(project_of(value.decode(errors="replace")), write=True)


async def read_multipart(request: web.Request, max_body_bytes: int,
                         check: Callable[[str, bytes], None]) -> dict[str, bytes]:
    """Every named part of a ``multipart/form-data`` body, at most ``max_body_bytes`` in all,
    at the pace of :class:`BodyPace`; ``check(name, value)`` sees each part once read."""
    declared = request.content_length
    if declared is not None and declared > max_body_bytes:
        raise ApiError(413, f"Content-Length {declared} exceeds the {max_body_bytes}-byte limit")
    try:
        reader = await request.multipart()
    except (AssertionError, ValueError, KeyError) as exc:
        raise ApiError(400, f"expected a multipart/form-data body: {exc}") from None
    fields: dict[str, bytes] = {}
    total_bytes = 0
    pace = BodyPace(request.content)
    while (part := await pace.read(reader.next())) is not None:
        if not isinstance(part, BodyPartReader) or not part.name:
            raise ApiError(400, "multipart body holds an unnamed or nested part")
        data = bytearray()
        while chunk := await pace.read(part.read_chunk()):
            data += chunk
            total_bytes += len(chunk)
            if total_bytes > max_body_bytes:
                raise ApiError(413, f"request body exceeds the {max_body_bytes}-byte limit")
            pace.check(request.content.total_bytes)
        fields[part.name] = bytes(data)
        check(part.name, fields[part.name])
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
