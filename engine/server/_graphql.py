"""The few W&B GraphQL answers an unmodified ``weave.init()`` needs to run offline.

weave 0.54.0 sends, at ``WANDB_BASE_URL/graphql`` (``weave/compat/wandb/wandb_thin/
internal_api.py``, ``weave/wandb_interface/project_creator.py``):
  - ``query Project { project(name, entityName) { name } }`` — does the project exist?
  - ``mutation UpsertModel { upsertModel(input: {name, entityName, …}) { model { name description } } }``
  - ``query DefaultEntity { viewer { username defaultEntity { name } } }``
  - ``query ServerInfo { serverInfo { frontendHost } }`` (some code paths)
This is no GraphQL engine: the operation is recognised by its root field, and anything
else gets a GraphQL error, which weave treats as "not available".
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from aiohttp import web

from engine.server._state import ServerState, state_of

routes = web.RouteTableDef()

_ROOT_FIELD = re.compile(r"\b(upsertModel|viewer|project|serverInfo)\b")


class _GraphQLReq(msgspec.Struct, kw_only=True):
    query: str
    variables: dict[str, Any] | None = None
    operationName: str | None = None  # noqa: N815  (the GraphQL wire name)


def _root_field(query: str) -> str | None:
    """The first known root field inside the selection set (after the operation header)."""
    match = _ROOT_FIELD.search(query, query.find("{") + 1)
    return match.group(1) if match else None


def _upsert_model(state: ServerState, variables: dict[str, Any]) -> dict[str, Any]:
    name = str(variables.get("name") or "")
    entity = str(variables.get("entity") or variables.get("entityName") or state.default_entity)
    state.projects.add((entity, name))
    model = {"name": name, "description": variables.get("description"), "entityName": entity}
    return {"upsertModel": {"model": model, "inserted": True}}


def _project(state: ServerState, variables: dict[str, Any]) -> dict[str, Any]:
    key = (str(variables.get("entityName") or state.default_entity), str(variables.get("name")))
    return {"project": {"name": key[1], "entityName": key[0]} if key in state.projects else None}


def _viewer(state: ServerState, variables: dict[str, Any]) -> dict[str, Any]:
    entity = state.default_entity
    return {"viewer": {"username": entity, "entity": entity, "defaultEntity": {"name": entity}}}


def _server_info(request: web.Request) -> dict[str, Any]:
    return {"serverInfo": {"frontendHost": f"{request.scheme}://{request.host}"}}


@routes.post("/graphql")
async def graphql(request: web.Request) -> web.Response:
    state = state_of(request)
    req = await state.decode(request, _GraphQLReq)
    variables = req.variables or {}
    field = _root_field(req.query)
    if field == "upsertModel":
        data = _upsert_model(state, variables)
    elif field == "project":
        data = _project(state, variables)
    elif field == "viewer":
        data = _viewer(state, variables)
    elif field == "serverInfo":
        data = _server_info(request)
    else:
        message = "engine serve answers only viewer, project, upsertModel and serverInfo"
        return web.json_response({"data": None, "errors": [{"message": message}]})
    return web.json_response({"data": data})
