"""The trace browser: static pages shipped in ``engine/server/ui/`` and one list of projects.

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

import html
from importlib import resources

from aiohttp import web

from engine.server._routes_retention import default_days
from engine.server._state import state_of

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
