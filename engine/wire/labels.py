"""Tags and aliases of object versions: weave 0.54.0's ``obj_add_tags`` … ``aliases_list``.

The client's methods take one request (``ObjAddTagsReq`` …, or a dict of the same fields);
on the wire the object id and digest go in the path and the rest in the body:

- ``PUT /objs/{object_id}/versions/{digest}/tags`` and ``POST …/tags/remove``:
  ``{"project_id", "tags"}``
- ``PUT /objs/{object_id}/aliases``: ``{"project_id", "digest", "aliases"}`` (an alias names
  one version of an object: setting it moves it); ``POST /objs/{object_id}/aliases/remove``:
  ``{"project_id", "aliases"}``
- ``GET /tags?project_id=…`` and ``GET /aliases?project_id=…``: every name in the project.
"""

from __future__ import annotations

from engine.wire._base import Request, Response

__all__ = [
    "ObjAddTagsReq",
    "ObjRemoveTagsReq",
    "ObjSetAliasesReq",
    "ObjRemoveAliasesReq",
    "TagsListReq",
    "AliasesListReq",
    "LabelsRes",
    "TagsListRes",
    "AliasesListRes",
    "TagsBody",
    "AliasesSetBody",
    "AliasesRemoveBody",
]


class ObjAddTagsReq(Request, kw_only=True):
    project_id: str
    object_id: str
    digest: str
    tags: list[str]


class ObjRemoveTagsReq(ObjAddTagsReq, kw_only=True):
    pass


class ObjSetAliasesReq(Request, kw_only=True):
    project_id: str
    object_id: str
    digest: str
    aliases: list[str]


class ObjRemoveAliasesReq(Request, kw_only=True):
    project_id: str
    object_id: str
    aliases: list[str]


class TagsListReq(Request, kw_only=True):
    project_id: str


class AliasesListReq(TagsListReq, kw_only=True):
    pass


class LabelsRes(Response, kw_only=True):
    """The empty answer of the four changes."""


class TagsListRes(Response, kw_only=True):
    tags: list[str]


class AliasesListRes(Response, kw_only=True):
    aliases: list[str]


# -- the bodies on the wire (path parameters left out) ------------------------------------


class TagsBody(Request, kw_only=True):
    project_id: str
    tags: list[str]


class AliasesSetBody(Request, kw_only=True):
    project_id: str
    digest: str
    aliases: list[str]


class AliasesRemoveBody(Request, kw_only=True):
    project_id: str
    aliases: list[str]
