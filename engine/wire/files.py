"""File models (WIRE.md §5).

Newer servers take ``/file/create``, ``/file/content``, ``/files/query_stats``; older ones
``/files/create``, ``/files/content``, ``/files/stats``. ``file_create`` is not JSON on the
wire: it is ``multipart/form-data`` with text fields ``project_id`` (and
``expected_digest`` when set) and a file part ``file`` named :attr:`FileCreateReq.name`
holding :attr:`FileCreateReq.content` (see :func:`multipart_fields`).
``file_content_read`` answers with the raw bytes, which the client wraps in
:class:`FileContentReadRes`.
"""

from __future__ import annotations

from engine.wire._base import Request, Response

__all__ = [
    "FileCreateReq",
    "FileCreateRes",
    "FileContentReadReq",
    "FileContentReadRes",
    "FilesStatsReq",
    "FilesStatsRes",
    "multipart_fields",
]


class FileCreateReq(Request, kw_only=True):
    project_id: str
    name: str
    content: bytes
    expected_digest: str | None = None


class FileCreateRes(Response, kw_only=True):
    digest: str


class FileContentReadReq(Request, kw_only=True):
    project_id: str
    digest: str


class FileContentReadRes(Response, kw_only=True):
    content: bytes


class FilesStatsReq(Request, kw_only=True):
    project_id: str


class FilesStatsRes(Response, kw_only=True):
    total_size_bytes: int


def multipart_fields(req: FileCreateReq) -> tuple[dict[str, str], tuple[str, bytes]]:
    """The multipart form of a file upload: (text fields, (file name, file bytes)).

    The file part's field name is always ``file``.
    """
    fields = {"project_id": req.project_id}
    if req.expected_digest is not None:
        fields["expected_digest"] = req.expected_digest
    return fields, (req.name, req.content)
