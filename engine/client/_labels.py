"""Plans of the tag and alias methods (weave 0.54.0's ``obj_add_tags`` … ``aliases_list``):
the request's object id and digest go in the path, the rest in the body
(``engine.wire.labels``)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from engine.client._core import ClientCore, Plan, coerce
from engine.wire import labels as lb
from engine.wire.routes import EXTRA_ROUTES

__all__ = ["change", "names"]


# the client's request type of each change; its route's body type is the request's base, and
# the fields the body lacks go in the path
_CHANGES = {
    "obj_add_tags": lb.ObjAddTagsReq, "obj_remove_tags": lb.ObjRemoveTagsReq,
    "obj_set_aliases": lb.ObjSetAliasesReq, "obj_remove_aliases": lb.ObjRemoveAliasesReq,
}  # fmt: skip


def change(core: ClientCore, name: str, req: Any) -> Plan[lb.LabelsRes]:
    """One of the four changes: the request's body fields as the body, the rest (object id,
    and a tag change's digest) in the path."""
    r = coerce(req, _CHANGES[name])
    route = EXTRA_ROUTES[name]
    in_body = route.req.__struct_fields__
    body = route.req(**{f: getattr(r, f) for f in in_body})
    path = {f: quote(getattr(r, f), safe="") for f in r.__struct_fields__ if f not in in_body}
    request = core.json_request(name, body, **path)
    response = core.check(request, (yield request))
    return core.decode(route.res, response.body, name)


def names(core: ClientCore, name: str, req: Any) -> Plan[Any]:
    """``tags_list`` or ``aliases_list``: ``GET /tags?project_id=…`` (or ``/aliases``)."""
    project_id = coerce(req, lb.TagsListReq).project_id
    route = EXTRA_ROUTES[name]
    request = core.json_request(name, None, path=f"{route.path}?project_id={quote(project_id, safe='')}")
    response = core.check(request, (yield request))
    return core.decode(route.res, response.body, name)
