"""``engine serve --root-path /engine``: the server behind a reverse proxy at a path prefix.

Operators put the server at ``https://tools.example/engine/`` with a proxy that forwards
``/engine/…`` to it. As uvicorn's ``root_path``, the value is where the server's paths
begin for the browser: the trace browser builds every URL it uses (its assets, the API,
its links and history entries) under it, and reads the project from its own address with
it removed.

Unlike uvicorn, a request whose path still carries the root path is served too, as the
path without it: a proxy that strips the prefix (nginx ``proxy_pass http://up/;``, Caddy
``handle_path``) and one that does not (``proxy_pass http://up;``, ``handle``) both work,
and so does the server's own URL opened directly (``http://127.0.0.1:6345/`` loads the
page, whose URLs then carry the root path). Every route is registered at both paths; a
path that names a route as it stands is that route (an entity named as the root path's
first part opens under a stripping proxy as under any other).
"""

from __future__ import annotations

import string
from collections.abc import Iterable

from aiohttp import web

# the characters a path part may hold without percent-encoding that a browser, a proxy's
# configuration and an HTML attribute all keep as they are (RFC 3986's unreserved)
_PART_CHARS = frozenset(string.ascii_letters + string.digits + "-._~")
EXAMPLE = "e.g. /engine"


def root_path_problem(text: str) -> str | None:
    """What is wrong with ``text`` as a root path (None: nothing; ``""`` and ``"/"`` are none)."""
    if text in ("", "/"):
        return None
    if not text.startswith("/"):
        return "must start with '/'"
    for char, what in (("?", "a query ('?')"), ("#", "a fragment ('#')")):
        if char in text:
            return f"holds {what}: it is a path only"
    bad = sorted({c for c in text if c != "/" and c not in _PART_CHARS})
    if bad:
        return (f"holds {''.join(bad)!r}: each part is letters, digits, '-', '.', '_' or '~' "
                "(no control characters, spaces or percent-encoding)")
    parts = text.rstrip("/").split("/")[1:]
    if any(part in (".", "..") for part in parts):
        return "holds a part '.' or '..', which a browser resolves away"
    if any(not part for part in parts):
        return "holds an empty part ('//')"
    return None


def normalise(text: str) -> str:
    """The root path as the server uses it: ``"/engine"`` (a trailing ``/`` dropped), or
    ``""`` for none. Raises ValueError naming the problem."""
    problem = root_path_problem(text)
    if problem is not None:
        raise ValueError(f"{text!r} {problem} ({EXAMPLE})")
    return text.rstrip("/")


def under(root_path: str, routes: Iterable[web.RouteDef]) -> list[web.RouteDef]:
    """``routes`` again under ``root_path`` (unnamed: a name belongs to one route), ``/``
    at ``root_path`` itself too."""
    copies = []
    for route in routes:
        kwargs = {k: v for k, v in route.kwargs.items() if k != "name"}
        paths = [root_path + route.path] + ([root_path] if route.path == "/" else [])
        copies += [web.RouteDef(route.method, path, route.handler, kwargs) for path in paths]
    return copies


def open_under(root_path: str, routes: frozenset[tuple[str, str]]) -> frozenset[tuple[str, str]]:
    """``(method, path)`` pairs of ``routes`` at both of their paths."""
    return routes | {(method, root_path + path) for method, path in routes}
