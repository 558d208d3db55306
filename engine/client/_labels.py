"""Plans of the tag and alias methods (weave 0.54.0's ``obj_add_tags`` … ``aliases_list``):
the request's object id and digest go in the path, the rest in the body
(``engine.wire.labels``)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from engine.client._core import ClientCore, Plan, coerce
from engine.wire import labels as lb
from engine.wire.routes import EXTRA_ROUTES

__all__ = ["add_tags", "remove_tags", "set_aliases", "remove_aliases", "names"]


def _send(core: ClientCore, name: str, body: Any, **path_params: str) -> Plan[Any]:
    request = core.json_request(name, body, **path_params)
    response = core.check(request, (yield request))
    return core.decode(EXTRA_ROUTES[name].res, response.body, name)


def add_tags(core: ClientCore, req: Any) -> Plan[lb.LabelsRes]:
    r = coerce(req, lb.ObjAddTagsReq)
    return (yield from _send(core, "obj_add_tags", lb.TagsBody(project_id=r.project_id, tags=r.tags),
                             object_id=quote(r.object_id, safe=""), digest=quote(r.digest, safe="")))


def remove_tags(core: ClientCore, req: Any) -> Plan[lb.LabelsRes]:
    r = coerce(req, lb.ObjRemoveTagsReq)
    return (yield from _send(core, "obj_remove_tags", lb.TagsBody(project_id=r.project_id, tags=r.tags),
                             object_id=quote(r.object_id, safe=""), digest=quote(r.digest, safe="")))


def set_aliases(core: ClientCore, req: Any) -> Plan[lb.LabelsRes]:
    r = coerce(req, lb.ObjSetAliasesReq)
    body = lb.AliasesSetBody(project_id=r.project_id, digest=r.digest, aliases=r.aliases)
    return (yield from _send(core, "obj_set_aliases", body, object_id=quote(r.object_id, safe="")))


def remove_aliases(core: ClientCore, req: Any) -> Plan[lb.LabelsRes]:
    r = coerce(req, lb.ObjRemoveAliasesReq)
    body = lb.AliasesRemoveBody(project_id=r.project_id, aliases=r.aliases)
    return (yield from _send(core, "obj_remove_aliases", body, object_id=quote(r.object_id, safe="")))


def names(core: ClientCore, name: str, req: Any) -> Plan[Any]:
    """``tags_list`` or ``aliases_list``: ``GET /tags?project_id=…`` (or ``/aliases``)."""
    project_id = coerce(req, lb.TagsListReq).project_id
    route = EXTRA_ROUTES[name]
    request = core.json_request(name, None, path=f"{route.path}?project_id={quote(project_id, safe='')}")
    response = core.check(request, (yield request))
    return core.decode(route.res, response.body, name)
