"""Object and op models (WIRE.md §5): ``/obj/*``, ``/objs/query``, ``/op*`` and ``/v2/.../ops``.

Ops are objects whose ``val`` names their code file. The seed's ``op_create`` /
``op_read`` / ``ops_query`` take the legacy bodies (``OpCreateReq`` …, routes ``/op/create``,
``/op/read``, ``/ops/query``); weave 0.54.0 itself talks to the newer REST routes
``/v2/{entity}/{project}/ops…`` whose bodies are the ``*V2*`` models here.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from engine.wire._base import Nested, Request, Response
from engine.wire.query import SortBy

__all__ = [
    "ObjSchemaForInsert",
    "ObjSchema",
    "ObjCreateReq",
    "ObjCreateRes",
    "ObjReadReq",
    "ObjReadRes",
    "ObjectVersionFilter",
    "ObjQueryReq",
    "ObjQueryRes",
    "ObjDeleteReq",
    "DeletedObjVersion",
    "ObjDeleteRes",
    "OpCreateReq",
    "OpCreateRes",
    "OpReadReq",
    "OpReadRes",
    "OpVersionFilter",
    "OpQueryReq",
    "OpQueryRes",
    "OpCreateV2Req",
    "OpCreateV2Res",
    "OpReadV2Res",
    "OpDeleteV2Res",
]


class ObjSchemaForInsert(Nested, kw_only=True):
    project_id: str
    object_id: str
    val: Any
    builtin_object_class: str | None = None
    # the client's own digest of ``val``; the server checks it against what it computes
    expected_digest: str | None = None
    # deprecated spelling of builtin_object_class that older UIs still send
    set_base_object_class: str | None = None
    wb_user_id: str | None = None


class ObjSchema(Response, kw_only=True):
    """One stored object version."""

    project_id: str
    object_id: str
    created_at: _dt.datetime
    deleted_at: _dt.datetime | None = None
    digest: str
    version_index: int
    is_latest: int
    kind: str
    base_object_class: str | None = None
    leaf_object_class: str | None = None
    val: Any
    wb_user_id: str | None = None
    size_bytes: int | None = None
    aliases: list[str] | None = None
    tags: list[str] | None = None


class ObjCreateReq(Request, kw_only=True):
    obj: ObjSchemaForInsert


class ObjCreateRes(Response, kw_only=True):
    digest: str
    object_id: str | None = None


class ObjReadReq(Request, kw_only=True):
    project_id: str
    object_id: str
    # a content digest, or an alias such as "latest" / "v3"
    digest: str
    metadata_only: bool | None = False
    include_tags_and_aliases: bool | None = False


class ObjReadRes(Response, kw_only=True):
    obj: ObjSchema


class ObjectVersionFilter(Nested, kw_only=True):
    base_object_classes: list[str] | None = None
    exclude_base_object_classes: list[str] | None = None
    leaf_object_classes: list[str] | None = None
    object_ids: list[str] | None = None
    is_op: bool | None = None
    latest_only: bool | None = None
    aliases: list[str] | None = None
    tags: list[str] | None = None


class ObjQueryReq(Request, kw_only=True):
    project_id: str
    filter: ObjectVersionFilter | None = None
    limit: int | None = None
    offset: int | None = None
    # the server sorts objects by "object_id" or "created_at" only
    sort_by: list[SortBy] | None = None
    metadata_only: bool | None = False
    include_storage_size: bool | None = False
    include_tags_and_aliases: bool | None = False


class ObjQueryRes(Response, kw_only=True):
    objs: list[ObjSchema]


class ObjDeleteReq(Request, kw_only=True):
    project_id: str
    object_id: str
    # None deletes every version of the object
    digests: list[str] | None = None


class DeletedObjVersion(Response, kw_only=True):
    digest: str
    base_object_class: str | None = None
    leaf_object_class: str | None = None


class ObjDeleteRes(Response, kw_only=True):
    num_deleted: int
    # None when the server does not report which versions went
    deleted_versions: list[DeletedObjVersion] | None = None


class OpCreateReq(Request, kw_only=True):
    op_obj: ObjSchemaForInsert


class OpCreateRes(Response, kw_only=True):
    digest: str


class OpReadReq(Request, kw_only=True):
    project_id: str
    name: str
    digest: str


class OpReadRes(Response, kw_only=True):
    op_obj: ObjSchema


class OpVersionFilter(Nested, kw_only=True):
    op_names: list[str] | None = None
    latest_only: bool | None = None


class OpQueryReq(Request, kw_only=True):
    project_id: str
    filter: OpVersionFilter | None = None


class OpQueryRes(Response, kw_only=True):
    op_objs: list[ObjSchema]


class OpCreateV2Req(Request, kw_only=True):
    """Body of ``POST /v2/{entity}/{project}/ops`` (the project is in the path)."""

    # ops with the same name are versioned together
    name: str | None = None
    source_code: str | None = None


class OpCreateV2Res(Response, kw_only=True):
    digest: str
    object_id: str
    version_index: int


class OpReadV2Res(Response, kw_only=True):
    """Reply of ``GET /v2/{e}/{p}/ops/{object_id}/versions/{digest}``; also one line of
    the JSONL reply of ``GET /v2/{e}/{p}/ops`` (the op list)."""

    object_id: str
    digest: str
    version_index: int
    created_at: _dt.datetime
    code: str


class OpDeleteV2Res(Response, kw_only=True):
    num_deleted: int
