"""Objects and ops: content-addressed versions, read by digest, ``latest`` or ``v<N>``.

An object version is keyed by (project, object id, digest): creating the same content
again returns the same digest and adds no version, so a retried create is harmless. The
digest is weave's own (:mod:`engine.server._digest`); a mismatching ``expected_digest`` is
answered with 409, which weave 0.54.0 takes as "fall back to server digests".

Ops are objects whose value is weave's serialized op (``{"_type": "CustomWeaveType",
"weave_type": {"type": "Op"}, "files": {"obj.py": <file digest>}}``); the older
``/op/*``, ``/ops/query`` routes here and the REST ``/v2/{entity}/{project}/ops…`` routes
(``_routes_v2``) both read and write them.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from aiohttp import web

from engine.server._body import ApiError
from engine.server._builtin_classes import as_builtin
from engine.server._digest import value_digest
from engine.server._reply import (
    not_found,
    now_us,
    ok,
    page_of,
    project_of,
    raw_json,
)
from engine.server._rows import from_us
from engine.server._state import state_of
from engine.server._store import ObjectsQuery, ObjectVersion
from engine.wire.objects import (
    ObjCreateReq,
    ObjDeleteReq,
    ObjectVersionFilter,
    ObjQueryReq,
    ObjReadReq,
    ObjSchemaForInsert,
    OpCreateReq,
    OpQueryReq,
    OpReadReq,
)

routes = web.RouteTableDef()
_OP_FILE = "obj.py"
MAX_OBJECT_ID_CHARS = 128  # weave's MAX_OBJECT_NAME_LENGTH
_NOT_IN_OBJECT_ID = re.compile(r"[^\w._-]")
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


def _stored_val(obj: ObjSchemaForInsert, field: str) -> Any:
    """The value as stored: a value already serialized with its class is kept (its class
    must be the one asked for, if any); a plain value asked to be of a builtin class is
    serialized as that class."""
    wanted = obj.builtin_object_class or obj.set_base_object_class
    _, leaf = object_classes(obj.val)
    if wanted is None:
        return obj.val
    if leaf is None:
        return as_builtin(obj.val, wanted, f"{field}.builtin_object_class")
    if wanted != leaf:
        raise ApiError(400, f"{field}.builtin_object_class: {wanted!r} does not match the "
                            f"value's class {leaf!r}")  # fmt: skip
    return obj.val


def check_object_id(object_id: str, field: str) -> str:
    """weave's ``object_id_validator``: 1..128 letters, digits, ``_``, ``.`` or ``-`` (an id
    holding ``/`` or ``:`` could not be read back by ref). weave answers 403 for the
    characters; 400 here: 403 is a key's refusal."""
    bad = sorted(set(_NOT_IN_OBJECT_ID.findall(object_id)))
    if bad:
        raise ApiError(400, f"{field}: {object_id!r} holds {bad}; an object id holds only "
                            "letters, digits, '_', '.' and '-'")  # fmt: skip
    if not 1 <= len(object_id) <= MAX_OBJECT_ID_CHARS:
        raise ApiError(400, f"{field}: {len(object_id)} characters; an object id has "
                            f"1..{MAX_OBJECT_ID_CHARS}")  # fmt: skip
    return object_id


def new_version(obj: ObjSchemaForInsert, field: str) -> ObjectVersion:
    """The stored form of an object create: digest checked, kind and classes derived."""
    project_of(obj.project_id, f"{field}.project_id")
    check_object_id(obj.object_id, f"{field}.object_id")
    val = _stored_val(obj, field)
    base, leaf = object_classes(val)
    digest = value_digest(val)
    if obj.expected_digest is not None and obj.expected_digest != digest:
        raise ApiError(
            409, f"{field}.expected_digest: {obj.expected_digest!r} != stored digest {digest!r}"
        )
    return ObjectVersion(
        project_id=obj.project_id, object_id=obj.object_id, digest=digest, kind=kind_of(val),
        base_object_class=base, leaf_object_class=leaf,
        val=msgspec.json.encode(val).decode(), wb_user_id=obj.wb_user_id,
        created_at_us=now_us(),
    )  # fmt: skip


def obj_schema(v: ObjectVersion, *, metadata_only: bool = False, with_size: bool = False) -> dict:
    """A stored version as weave's ``ObjSchema``; ``val`` passes through as raw JSON."""
    return {
        "project_id": v.project_id, "object_id": v.object_id, "created_at": from_us(v.created_at_us),
        "deleted_at": from_us(v.deleted_at_us), "digest": v.digest,
        "version_index": v.version_index, "is_latest": int(v.is_latest), "kind": v.kind,
        "base_object_class": v.base_object_class, "leaf_object_class": v.leaf_object_class,
        "val": {} if metadata_only else raw_json(v.val), "wb_user_id": v.wb_user_id,
        "size_bytes": len(v.val.encode()) if with_size else None,
    }  # fmt: skip


async def _create(request: web.Request, obj: ObjSchemaForInsert, field: str) -> ObjectVersion:
    return await state_of(request).store.put_object(new_version(obj, field))


async def _read(request: web.Request, project_id: str, object_id: str,
                version: str) -> ObjectVersion:  # fmt: skip
    found = await state_of(request).store.read_object(project_id, object_id, version)
    if found is None:
        raise not_found(f"object {object_id!r} version {version!r} in project {project_id!r}")
    return found


# -- /obj/*, /objs/query ------------------------------------------------------------------


@routes.post("/obj/create")
async def obj_create(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, ObjCreateReq)
    stored = await _create(request, req.obj, "obj")
    return ok({"digest": stored.digest, "object_id": req.obj.object_id})


@routes.post("/obj/read")
async def obj_read(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, ObjReadReq)
    found = await _read(request, project_of(req.project_id), req.object_id, req.digest)
    obj = obj_schema(found, metadata_only=bool(req.metadata_only))
    if req.include_tags_and_aliases:
        await _add_labels(request, req.project_id, [obj])
    return ok({"obj": obj})


async def _add_labels(request: web.Request, project_id: str, objs: list[dict]) -> None:
    """``tags`` and ``aliases`` of each version; ``latest`` on the latest one."""
    keys = [(o["object_id"], o["digest"]) for o in objs]
    labels = await state_of(request).store.object_labels(project_id, keys)
    for obj, key in zip(objs, keys, strict=True):
        tags, aliases = labels.get(key, ([], []))
        if obj["is_latest"] and "latest" not in aliases:
            aliases = ["latest", *aliases]
        obj["tags"], obj["aliases"] = tags, aliases


_OBJ_SORT = frozenset({"object_id", "created_at"})
# the other columns of weave's object metadata (its objects query builder's): both weave
# servers take a sort by them and ignore it (their docs: only object_id and created_at
# sort), so weave's clients get an answer, in the default order
_OBJ_SORT_IGNORED = frozenset({
    "project_id", "refs", "kind", "base_object_class", "leaf_object_class", "digest",
    "version_index", "is_latest", "deleted_at", "wb_user_id", "version_count", "is_op",
})  # fmt: skip
MAX_FILTER_VALUES = 500


def _tuple(values: list[str] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(values)


def _objects_query(req: ObjQueryReq) -> ObjectsQuery:
    project_of(req.project_id)
    flt = req.filter or ObjectVersionFilter()
    lists = {"object_ids": flt.object_ids, "base_object_classes": flt.base_object_classes,
             "leaf_object_classes": flt.leaf_object_classes, "tags": flt.tags,
             "exclude_base_object_classes": flt.exclude_base_object_classes,
             "aliases": flt.aliases}  # fmt: skip
    for name, values in lists.items():
        if values is not None and len(values) > MAX_FILTER_VALUES:
            raise ApiError(422, f"filter.{name}: at most {MAX_FILTER_VALUES} values")
    limit, offset = page_of(req.limit, req.offset)
    return ObjectsQuery(
        project_id=req.project_id, **{k: _tuple(v) for k, v in lists.items()},
        is_op=flt.is_op, latest_only=bool(flt.latest_only), sort_by=_obj_order(req),
        limit=limit, offset=offset,
    )  # fmt: skip


def _obj_order(req: ObjQueryReq) -> tuple:
    for i, sort in enumerate(req.sort_by or []):
        if sort.field not in _OBJ_SORT | _OBJ_SORT_IGNORED:
            raise ApiError(
                422, f"sort_by[{i}].field: cannot sort objects by {sort.field!r}; "
                f"sortable: {', '.join(sorted(_OBJ_SORT))}",
            )  # fmt: skip
    return tuple((s.field, s.direction == "desc") for s in req.sort_by or [] if s.field in _OBJ_SORT)


async def _query(request: web.Request, req: ObjQueryReq) -> list[ObjectVersion]:
    return await state_of(request).store.query_objects(_objects_query(req))


@routes.post("/objs/query")
async def objs_query(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, ObjQueryReq)
    rows = await _query(request, req)
    meta, size = bool(req.metadata_only), bool(req.include_storage_size)
    objs = [obj_schema(r, metadata_only=meta, with_size=size) for r in rows]
    if req.include_tags_and_aliases:
        await _add_labels(request, req.project_id, objs)
    return ok({"objs": objs})


@routes.post("/obj/delete")
async def obj_delete(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, ObjDeleteReq)
    project_of(req.project_id)
    gone = await state_of(request).store.delete_objects(
        req.project_id, req.object_id, req.digests, now_us()
    )
    if not gone:
        raise not_found(f"object {req.object_id!r} (versions {req.digests}) in {req.project_id!r}")
    deleted = [{"digest": v.digest, "base_object_class": v.base_object_class,
                "leaf_object_class": v.leaf_object_class} for v in gone]  # fmt: skip
    return ok({"num_deleted": len(gone), "deleted_versions": deleted})


# -- older op routes ----------------------------------------------------------------------


@routes.post("/op/create")
async def op_create(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, OpCreateReq)
    if kind_of(req.op_obj.val) != "op":
        raise ApiError(422, "op_obj.val: not a serialized op (weave_type.type must be 'Op')")
    stored = await _create(request, req.op_obj, "op_obj")
    return ok({"digest": stored.digest})


@routes.post("/op/read")
async def op_read(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, OpReadReq)
    found = await _read(request, project_of(req.project_id), req.name, req.digest)
    if found.kind != "op":
        raise not_found(f"op {req.name!r} (an object of that name exists, not an op)")
    return ok({"op_obj": obj_schema(found)})


@routes.post("/ops/query")
async def ops_query(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, OpQueryReq)
    names = req.filter.op_names if req.filter else None
    latest = bool(req.filter and req.filter.latest_only)
    query = ObjQueryReq(project_id=req.project_id, filter=_op_filter(names, latest))
    return ok({"op_objs": [obj_schema(r) for r in await _query(request, query)]})


def _op_filter(names: list[str] | None, latest_only: bool) -> ObjectVersionFilter:
    return ObjectVersionFilter(object_ids=names, is_op=True, latest_only=latest_only)
