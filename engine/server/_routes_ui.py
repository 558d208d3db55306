"""The trace browser: static pages shipped in ``engine/server/ui/``, one list of projects and
one calls stream with previews (the compare page's).

The page is served at ``/`` and at the paths weave prints for a trace (with
``WANDB_BASE_URL`` pointing here: ``/{entity}/{project}/r/call/{id}`` for a call,
``/{entity}/{project}/weave`` for the project), so those links open in it. Everything else
it shows comes from the server's own query routes (``/calls/stream_query``, ``/objs/query``,
``/table/query``, …), called by ``app.js`` from the browser: no build step, nothing fetched
from elsewhere, works offline. With keys configured every route needs one, these too.
Behind a reverse proxy at a path prefix (``--root-path``) the page carries the prefix, and
``app.js`` builds every URL under it.
"""

from __future__ import annotations

import functools
import html
from importlib import resources
from typing import Annotated

import msgspec
from aiohttp import web

from engine.server._body import ApiError
from engine.server._calls_sql import split_path
from engine.server._calls_view import with_previews
from engine.server._routes_calls import stream_calls
from engine.server._routes_retention import default_days
from engine.server._state import state_of
from engine.wire.query import CallsQueryReq

routes = web.RouteTableDef()
PAGE_ROUTE = "ui-page"
ASSET_ROUTE = "ui-asset"
# where the browser finds the server's paths behind a reverse proxy (engine.server._root_path)
ROOT_PATH = web.AppKey("root_path", str)
_ROOT_MARK = b"{{root}}"
_ASSETS = {"app.js": "text/javascript", "app.css": "text/css", "favicon.svg": "image/svg+xml"}
# the page's own code and the server's routes only: data shown can never run as code
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _read(name: str) -> bytes:
    return resources.files("engine.server").joinpath("ui", name).read_bytes()


def _headers(content_type: str) -> dict[str, str]:
    return {"Content-Type": f"{content_type}; charset=utf-8", "Cache-Control": "no-cache",
            "Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff"}


async def page(request: web.Request) -> web.Response:
    """index.html with the root path in its asset URLs and in ``data-root-path``, where
    ``app.js`` reads it (validated to URL-safe characters; escaped all the same)."""
    root = html.escape(request.app[ROOT_PATH], quote=True).encode()
    body = _read("index.html").replace(_ROOT_MARK, root)
    return web.Response(body=body, headers=_headers("text/html"))


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _ASSETS:
        raise web.HTTPNotFound()
    return web.Response(body=_read(name), headers=_headers(_ASSETS[name]))


@routes.get("/ui/projects")
async def projects(request: web.Request) -> web.Response:
    """Every project with calls or objects, how many calls, and how many days they are
    kept (null: until deleted; the browser's first page, ``engine copy``'s default list)."""
    store = state_of(request).store
    counts = dict(await store.project_call_counts())
    for (project_id,) in await store.object_projects():
        counts.setdefault(project_id, 0)
    kept, default = dict(await store.retained_projects()), default_days(request)
    return web.json_response({"projects": [
        {"project_id": p, "calls": counts[p], "retention_days": kept.get(p, default)}
        for p in sorted(counts)]})


# not /{entity}/{project} alone: /wrong-prefix/server_info must stay a 404, which says
# "wrong path" to a client probing a base URL
_PAGE_PATHS = ("/", "/{entity}/{project}/r/call/{call_id}", "/{entity}/{project}/weave",
               "/{entity}/{project}/weave/{tail:.*}")
# registered last, after every API route (they only add GETs)
PAGES = [web.get("/ui/{name}", asset, name=ASSET_ROUTE)] + [
    web.get(path, page, name=f"{PAGE_ROUTE}.path{number}") for number, path in enumerate(_PAGE_PATHS)]


class UiCallsQueryReq(CallsQueryReq, kw_only=True):
    """``/calls/stream_query``'s body and ``previews``: dotted paths into a call's JSON
    (``output.output``) whose values the page shows only the first characters of, and how
    many (the start of a model's 20 KB answer in a cell of 160)."""

    previews: dict[str, Annotated[int, msgspec.Meta(ge=1, le=10_000)]] = msgspec.field(default_factory=dict)


_PREVIEW_HEADS = ("inputs", "output", "attributes", "summary")


def _check_previews(previews: dict[str, int]) -> None:
    for path in previews:
        parts = split_path(path)
        if parts[0] not in _PREVIEW_HEADS or len(parts) < 2 or not all(parts):
            raise ApiError(422, f"previews: {path!r} is no path inside a call's "
                                f"{', '.join(_PREVIEW_HEADS)} (e.g. output.output)")


@routes.post("/ui/calls/stream_query")
async def calls_previewed(request: web.Request) -> web.StreamResponse:
    """The calls of ``/calls/stream_query`` with the values at ``previews`` cut short: what
    the compare page reads of thousands of predictions (weave's ``columns`` keep or drop
    a whole ``output``; a preview keeps its scores whole and its answer's start)."""
    req = await state_of(request).decode(request, UiCallsQueryReq)
    _check_previews(req.previews)
    shape = functools.partial(with_previews, previews=req.previews) if req.previews else None
    return await stream_calls(request, req, shape)


REQUEST_TYPES = {("POST", "/ui/calls/stream_query"): UiCallsQueryReq}
