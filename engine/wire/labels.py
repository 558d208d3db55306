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

import re

from engine.wire._base import Request, Response

__all__ = [
    "reserved_alias",
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


_RESERVED_ALIAS = re.compile(r"^(latest|v\d+)$")


def reserved_alias(alias: str) -> bool:
    """``latest`` and ``v<number>``: names the server gives versions itself, never set by hand."""
    return _RESERVED_ALIAS.match(alias) is not None


# -- the bodies on the wire -------------------------------------------------------------


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


# -- the client's requests: a body and what goes in the path ------------------------------


class ObjAddTagsReq(TagsBody, kw_only=True):
    object_id: str
    digest: str


class ObjRemoveTagsReq(ObjAddTagsReq, kw_only=True):
    pass


class ObjSetAliasesReq(AliasesSetBody, kw_only=True):
    object_id: str


class ObjRemoveAliasesReq(AliasesRemoveBody, kw_only=True):
    object_id: str


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
