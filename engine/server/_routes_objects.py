"""Objects and ops: content-addressed versions, read by digest, ``latest`` or ``v<N>``.

An object version is keyed by (project, object id, digest): creating the same content
again returns the same digest and adds no version, so a retried create is harmless. The
digest is weave's own (:mod:`engine.server._digest`); a mismatching ``expected_digest`` is
answered with 409, which weave 0.54.0 takes as "fall back to server digests".

Ops are objects whose value is weave's serialized op (``{"_type": "CustomWeaveType",
"weave_type": {"type": "Op"}, "files": {"obj.py": <file digest>}}``); the older
``/op/*``, ``/ops/query`` routes and the REST ``/v2/{entity}/{project}/ops…`` routes both
read and write them.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from engine.server._body import ApiError, path_project
from engine.server._digest import bytes_digest, value_digest
from engine.server._reply import (
    not_found,
    now_us,
    ok,
    page_of,
    project_of,
    raw_json,
    stream_jsonl,
)
from engine.server._rows import from_us
from engine.server._sqlite_objects import (
    LATEST_VERSION_SQL,
    OBJ_COLUMNS,
    more_of,
    q_delete_objects,
    q_file,
    q_put_file,
    q_put_object,
    q_query_objects,
    q_read_object,
)
from engine.server._state import state_of
from engine.wire.objects import (
    ObjCreateReq,
    ObjDeleteReq,
    ObjectVersionFilter,
    ObjQueryReq,
    ObjReadReq,
    ObjSchemaForInsert,
    OpCreateReq,
    OpCreateV2Req,
    OpQueryReq,
    OpReadReq,
)

routes = web.RouteTableDef()
_OP_FILE = "obj.py"
_BASE_CLASS_NAMES = ("BaseObject", "Object")


# -- values -------------------------------------------------------------------------------


def kind_of(val: Any) -> str:
    """``op`` for a serialized op, else ``object`` (the real server's rule)."""
    if isinstance(val, dict) and "_type" in val:
        weave_type = val.get("weave_type")
        declared = weave_type.get("type") if isinstance(weave_type, dict) else val["_type"]
        return "op" if declared == "Op" else "object"
    return "object"


def object_classes(val: Any) -> tuple[str | None, str | None]:
    """(base, leaf) class of a serialized ``weave.Object``/``BaseObject``, else (None, None)."""
    bases = val.get("_bases") if isinstance(val, dict) else None
    if not isinstance(bases, list) or len(bases) < 2:
        return None, None
    if bases[-1] != "BaseModel" or bases[-2] not in _BASE_CLASS_NAMES:
        return None, None
    leaf = val.get("_class_name")
    return (bases[-3] if len(bases) > 2 else leaf), leaf


def _check_builtin_class(obj: ObjSchemaForInsert, leaf: str | None) -> None:
    wanted = obj.builtin_object_class or obj.set_base_object_class
    if wanted is not None and wanted != leaf:
        raise ApiError(
            422,
            f"obj.builtin_object_class: {wanted!r} does not match the value's class {leaf!r}; "
            "engine serve stores values already serialized with their class",
        )


def version_row(obj: ObjSchemaForInsert, field: str) -> dict[str, Any]:
    """The stored form of an object create: digest checked, kind and classes derived."""
    project_of(obj.project_id, f"{field}.project_id")
    if not obj.object_id:
        raise ApiError(422, f"{field}.object_id: must not be empty")
    base, leaf = object_classes(obj.val)
    _check_builtin_class(obj, leaf)
    digest = value_digest(obj.val)
    if obj.expected_digest is not None and obj.expected_digest != digest:
        raise ApiError(
            409, f"{field}.expected_digest: {obj.expected_digest!r} != stored digest {digest!r}"
        )
    return {
        "project_id": obj.project_id, "object_id": obj.object_id, "digest": digest,
        "kind": kind_of(obj.val), "base_object_class": base, "leaf_object_class": leaf,
        "val": msgspec.json.encode(obj.val).decode(), "wb_user_id": obj.wb_user_id,
        "created_at_us": now_us(), "deleted_at_us": None,
    }  # fmt: skip


def obj_schema(row: tuple, *, metadata_only: bool = False, with_size: bool = False) -> dict:
    """A stored version as weave's ``ObjSchema``; ``val`` passes through as raw JSON."""
    obj = dict(zip(OBJ_COLUMNS, row, strict=True))
    val_text = obj.pop("val")
    created, deleted = from_us(obj.pop("created_at_us")), from_us(obj.pop("deleted_at_us"))
    return {
        **obj, "val": {} if metadata_only else raw_json(val_text), "created_at": created,
        "deleted_at": deleted, "is_latest": int(bool(obj["is_latest"])),
        "size_bytes": len(val_text.encode()) if with_size else None,
    }  # fmt: skip


async def _create(request: web.Request, obj: ObjSchemaForInsert, field: str) -> tuple[str, int]:
    row = version_row(obj, field)
    index = await more_of(request).run(q_put_object, row)
    return row["digest"], index


async def _read(request: web.Request, project_id: str, object_id: str, version: str) -> tuple:
    row = await more_of(request).run(q_read_object, project_id, object_id, version)
    if row is None:
        raise not_found(f"object {object_id!r} version {version!r} in project {project_id!r}")
    return row


# -- /obj/*, /objs/query ------------------------------------------------------------------


@routes.post("/obj/create")
async def obj_create(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, ObjCreateReq)
    digest, _ = await _create(request, req.obj, "obj")
    return ok({"digest": digest, "object_id": req.obj.object_id})


@routes.post("/obj/read")
async def obj_read(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, ObjReadReq)
    row = await _read(request, project_of(req.project_id), req.object_id, req.digest)
    return ok({"obj": obj_schema(row, metadata_only=bool(req.metadata_only))})


_UNSUPPORTED_OBJ_FILTERS = ("aliases", "tags")
_OBJ_SORT = {"object_id": "o.object_id", "created_at": "o.created_at_us"}


def _obj_where(req: ObjQueryReq) -> tuple[list[str], list[Any]]:
    where, params = ["o.project_id = ?", "o.deleted_at_us IS NULL"], [req.project_id]
    flt = req.filter
    if flt is None:
        return where, params
    for name in _UNSUPPORTED_OBJ_FILTERS:
        if getattr(flt, name) is not None:
            raise ApiError(422, f"filter.{name}: not supported by engine serve")
    for name, column in (("object_ids", "o.object_id"), ("base_object_classes",
                         "o.base_object_class"), ("leaf_object_classes", "o.leaf_object_class")):  # fmt: skip
        values = getattr(flt, name)
        if values is not None:
            where.append(f"{column} IN ({', '.join('?' * len(values))})")
            params.extend(values)
    if flt.exclude_base_object_classes:
        marks = ", ".join("?" * len(flt.exclude_base_object_classes))
        where.append(f"coalesce(o.base_object_class, '') NOT IN ({marks})")
        params.extend(flt.exclude_base_object_classes)
    if flt.is_op is not None:
        where.append("o.kind = 'op'" if flt.is_op else "o.kind != 'op'")
    if flt.latest_only:
        where.append("o.version_index = " + LATEST_VERSION_SQL)
    return where, params


def _obj_order(req: ObjQueryReq) -> str:
    terms = []
    for i, sort in enumerate(req.sort_by or []):
        column = _OBJ_SORT.get(sort.field)
        if column is None:
            raise ApiError(
                422, f"sort_by[{i}].field: cannot sort objects by {sort.field!r}; "
                f"sortable: {', '.join(_OBJ_SORT)}",
            )  # fmt: skip
        terms.append(f"{column} {sort.direction.upper()}")
    return ", ".join([*terms, "o.created_at_us ASC", "o.object_id ASC", "o.version_index ASC"])


async def _query(request: web.Request, req: ObjQueryReq) -> list[tuple]:
    project_of(req.project_id)
    if any(len(v or ()) > 500 for v in _filter_lists(req)):
        raise ApiError(422, "filter: at most 500 values per list")
    where, params = _obj_where(req)
    page = page_of(req.limit, req.offset)
    return await more_of(request).run(q_query_objects, where, params, _obj_order(req), page)


def _filter_lists(req: ObjQueryReq) -> list[list[str] | None]:
    flt = req.filter
    if flt is None:
        return []
    return [flt.object_ids, flt.base_object_classes, flt.leaf_object_classes,
            flt.exclude_base_object_classes]  # fmt: skip


@routes.post("/objs/query")
async def objs_query(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, ObjQueryReq)
    rows = await _query(request, req)
    meta, size = bool(req.metadata_only), bool(req.include_storage_size)
    return ok({"objs": [obj_schema(r, metadata_only=meta, with_size=size) for r in rows]})


@routes.post("/obj/delete")
async def obj_delete(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, ObjDeleteReq)
    project_of(req.project_id)
    gone = await more_of(request).run(
        q_delete_objects, req.project_id, req.object_id, req.digests, now_us()
    )
    if not gone:
        raise not_found(f"object {req.object_id!r} (versions {req.digests}) in {req.project_id!r}")
    deleted = [{"digest": r[2], "base_object_class": r[5], "leaf_object_class": r[6]} for r in gone]
    return ok({"num_deleted": len(gone), "deleted_versions": deleted})


# -- older op routes ----------------------------------------------------------------------


@routes.post("/op/create")
async def op_create(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, OpCreateReq)
    if kind_of(req.op_obj.val) != "op":
        raise ApiError(422, "op_obj.val: not a serialized op (weave_type.type must be 'Op')")
    digest, _ = await _create(request, req.op_obj, "op_obj")
    return ok({"digest": digest})


@routes.post("/op/read")
async def op_read(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, OpReadReq)
    row = await _read(request, project_of(req.project_id), req.name, req.digest)
    if row[OBJ_COLUMNS.index("kind")] != "op":
        raise not_found(f"op {req.name!r} (an object of that name exists, not an op)")
    return ok({"op_obj": obj_schema(row)})


@routes.post("/ops/query")
async def ops_query(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, OpQueryReq)
    names = req.filter.op_names if req.filter else None
    latest = bool(req.filter and req.filter.latest_only)
    query = ObjQueryReq(project_id=req.project_id, filter=_op_filter(names, latest))
    return ok({"op_objs": [obj_schema(r) for r in await _query(request, query)]})


def _op_filter(names: list[str] | None, latest_only: bool) -> ObjectVersionFilter:
    return ObjectVersionFilter(object_ids=names, is_op=True, latest_only=latest_only)


# -- REST ops: /v2/{entity}/{project}/ops -------------------------------------------------




def _op_val(code_digest: str) -> dict[str, Any]:
    return {"_type": "CustomWeaveType", "weave_type": {"type": "Op"},
            "files": {_OP_FILE: code_digest}}  # fmt: skip


@routes.post("/v2/{entity}/{project}/ops")
async def op_create_v2(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, OpCreateV2Req)
    project_id = path_project(request)
    if not req.name:
        raise ApiError(422, "name: an op name is required")
    code = (req.source_code or "").encode()
    code_digest = bytes_digest(code)
    await more_of(request).run(q_put_file, project_id, code_digest, code)
    obj = ObjSchemaForInsert(project_id=project_id, object_id=req.name, val=_op_val(code_digest))
    digest, index = await _create(request, obj, "op")
    return ok({"digest": digest, "object_id": req.name, "version_index": index})


async def _op_v2(request: web.Request, project_id: str, row: tuple) -> dict[str, Any]:
    obj = dict(zip(OBJ_COLUMNS, row, strict=True))
    files = msgspec.json.decode(obj["val"]).get("files") or {}
    code = await more_of(request).run(q_file, project_id, files.get(_OP_FILE, ""))
    return {
        "object_id": obj["object_id"], "digest": obj["digest"],
        "version_index": obj["version_index"], "created_at": from_us(obj["created_at_us"]),
        "code": (code or b"").decode(errors="replace"),
    }  # fmt: skip


@routes.get("/v2/{entity}/{project}/ops/{object_id}/versions/{digest}")
async def op_read_v2(request: web.Request) -> web.Response:
    project_id = path_project(request)
    object_id, digest = request.match_info["object_id"], request.match_info["digest"]
    row = await _read(request, project_id, object_id, digest)
    if row[OBJ_COLUMNS.index("kind")] != "op":
        raise not_found(f"op {object_id!r} (an object of that name exists, not an op)")
    return ok(await _op_v2(request, project_id, row))


def _int_param(request: web.Request, name: str) -> int | None:
    text = request.query.get(name)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise ApiError(422, f"{name}: expected an integer, got {text!r}") from None


@routes.get("/v2/{entity}/{project}/ops")
async def op_list_v2(request: web.Request) -> web.StreamResponse:
    project_id = path_project(request)
    query = ObjQueryReq(
        project_id=project_id, filter=_op_filter(None, False),
        limit=_int_param(request, "limit"), offset=_int_param(request, "offset"),
    )  # fmt: skip
    rows = await _query(request, query)

    async def lines():
        for row in rows:
            yield [await _op_v2(request, project_id, row)]

    return await stream_jsonl(request, lines())


@routes.delete("/v2/{entity}/{project}/ops/{object_id}")
async def op_delete_v2(request: web.Request) -> web.Response:
    project_id = path_project(request)
    object_id = request.match_info["object_id"]
    digests = request.query.getall("digests", None)
    gone = await more_of(request).run(q_delete_objects, project_id, object_id, digests, now_us())
    if not gone:
        raise not_found(f"op {object_id!r} (versions {digests}) in {project_id!r}")
    return ok({"num_deleted": len(gone)})
