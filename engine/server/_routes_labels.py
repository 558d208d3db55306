"""Tags and aliases of object versions (weave 0.54.0's ``obj_add_tags`` … ``aliases_list``).

A tag marks a version (many per version); an alias names one version of an object
(``prod`` → v3) and moves when set again. ``latest`` is an alias the server keeps itself:
it cannot be set or removed by hand, and reads list it on the latest version.
"""

from __future__ import annotations

import re

import msgspec
from aiohttp import web

from engine.server._body import ApiError
from engine.server._reply import not_found, ok, project_of
from engine.server._state import state_of
from engine.wire.labels import AliasesRemoveBody, AliasesSetBody, TagsBody, reserved_alias

routes = web.RouteTableDef()
MAX_TAG_CHARS = 256
MAX_ALIAS_CHARS = 128
MAX_LABELS = 100
_TAG = re.compile(r"^[-\w]+( [-\w]+)*$")


def check_tag(tag: str, field: str) -> None:
    if not tag or len(tag) > MAX_TAG_CHARS or not _TAG.match(tag):
        raise ApiError(400, f"{field}: tag {tag!r} must be 1..{MAX_TAG_CHARS} letters, digits, "
                            "'-' or '_', words separated by single spaces")  # fmt: skip


def check_alias(alias: str, field: str) -> None:
    if not alias.strip() or len(alias) > MAX_ALIAS_CHARS or set(alias) & set("/:"):
        raise ApiError(400, f"{field}: alias {alias!r} must be 1..{MAX_ALIAS_CHARS} characters, "
                            "not blank, without '/' or ':'")  # fmt: skip
    if reserved_alias(alias):
        raise ApiError(400, f"{field}: alias {alias!r} is reserved (latest, v<number>)")


def _checked(names: list[str], field: str, check) -> list[str]:
    if len(names) > MAX_LABELS:
        raise ApiError(400, f"{field}: at most {MAX_LABELS} at a time, got {len(names)}")
    for i, name in enumerate(names):
        check(name, f"{field}[{i}]")
    return names


async def _decode(request: web.Request, type_: type[msgspec.Struct]):
    req = await state_of(request).decode(request, type_)
    project_of(req.project_id)
    return req


@routes.put("/objs/{object_id}/aliases")
async def obj_set_aliases(request: web.Request) -> web.Response:
    req = await _decode(request, AliasesSetBody)
    object_id = request.match_info["object_id"]
    aliases = _checked(req.aliases, "aliases", check_alias)
    if not await state_of(request).store.set_aliases(req.project_id, object_id, req.digest, aliases):
        raise not_found(f"object version {object_id}:{req.digest} in {req.project_id!r}")
    return ok({})


@routes.post("/objs/{object_id}/aliases/remove")
async def obj_remove_aliases(request: web.Request) -> web.Response:
    req = await _decode(request, AliasesRemoveBody)
    aliases = _checked(req.aliases, "aliases", check_alias)
    await state_of(request).store.remove_aliases(req.project_id, request.match_info["object_id"], aliases)
    return ok({})


@routes.put("/objs/{object_id}/versions/{digest}/tags")
async def obj_add_tags(request: web.Request) -> web.Response:
    req = await _decode(request, TagsBody)
    object_id, digest = request.match_info["object_id"], request.match_info["digest"]
    tags = _checked(req.tags, "tags", check_tag)
    if not await state_of(request).store.add_tags(req.project_id, object_id, digest, tags):
        raise not_found(f"object version {object_id}:{digest} in {req.project_id!r}")
    return ok({})


@routes.post("/objs/{object_id}/versions/{digest}/tags/remove")
async def obj_remove_tags(request: web.Request) -> web.Response:
    req = await _decode(request, TagsBody)
    object_id, digest = request.match_info["object_id"], request.match_info["digest"]
    await state_of(request).store.remove_tags(req.project_id, object_id, digest, req.tags)
    return ok({})


def _project_param(request: web.Request) -> str:
    project_id = request.query.get("project_id")
    if project_id is None:
        raise ApiError(422, "project_id: query parameter required")
    return project_of(project_id)


@routes.get("/tags")
async def tags_list(request: web.Request) -> web.Response:
    names = await state_of(request).store.label_names(_project_param(request), "tag")
    return ok({"tags": names})


@routes.get("/aliases")
async def aliases_list(request: web.Request) -> web.Response:
    names = await state_of(request).store.label_names(_project_param(request), "alias")
    return ok({"aliases": names})


# bodies of these routes, for whoever checks them by type (tests/server/test_fuzz_routes.py)
REQUEST_TYPES = {
    ("PUT", "/objs/{object_id}/aliases"): AliasesSetBody,
    ("POST", "/objs/{object_id}/aliases/remove"): AliasesRemoveBody,
    ("PUT", "/objs/{object_id}/versions/{digest}/tags"): TagsBody,
    ("POST", "/objs/{object_id}/versions/{digest}/tags/remove"): TagsBody,
}
