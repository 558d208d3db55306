"""Which requests a server (``engine serve``, ``engine relay``) answers by where they come
from: no other website's page, and, without keys, no name but loopback's.

A browser lets any page send a "simple" cross-site request (a POST of ``text/plain``,
no preflight) and attaches what it holds for the target (HTTP Basic credentials the user
typed for the trace browser); the page cannot read the answer, but the request is
carried out: calls written or deleted, a retention changed. Every such request carries
``Origin``; our clients (the engine's sender, weave's client, the relay, which drops a
browser's once checked) send none. So a request whose ``Origin`` is not the server's own
(the authority its ``Host`` names) is refused, on every route, whether or not keys are set.

DNS rebinding: a page at ``http://rebind.example:6345`` whose name is made to resolve to
127.0.0.1 reaches a loopback server as its own origin, and could read every project of a
server without keys. A browser sends the name it resolved in ``Host``, so a server
without keys (which listens on loopback only) answers only requests addressed to a
loopback name. With keys the key is the guard (a rebinding page has none), and a server
answers whatever name operators reach it by (a reverse proxy, a DNS name).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from yarl import URL

from engine.server._auth import is_loopback
from engine.server._body import ApiError


def _host_port(authority: str, scheme: str) -> tuple[str, int | None] | None:
    """``(host, port)`` of a ``Host`` value reached by ``scheme`` (the default port when it
    names none); None when it does not parse."""
    if authority.count(":") > 1 and not authority.startswith("["):
        authority = f"[{authority}]"  # a bare IPv6 address (``::1``) names no port
    try:
        url = URL(f"{scheme}://{authority}")
    except ValueError:
        return None
    if url.host is None or url.raw_path not in ("", "/") or url.user is not None:
        return None
    return url.host.lower().rstrip("."), url.port


def check_origin(command: str, origin: str | None, host: str | None) -> None:
    """403 unless a request without ``Origin`` or with the origin its ``Host`` names."""
    if origin is None:
        return
    scheme = origin.partition("://")[0].lower()
    sent = _host_port(origin.partition("://")[2], scheme) if scheme in ("http", "https") else None
    if sent is None or host is None or sent != _host_port(host, scheme):
        raise ApiError(403, f"cross-origin request refused: Origin {origin!r} is not this "
                            f"server's own (Host {host!r}); {command} answers no other "
                            "website's page: open the trace browser at the server's own URL")


def check_loopback_host(command: str, host: str | None) -> None:
    """421 unless a request without ``Host`` or addressed to a loopback name (with any port)."""
    if host is None:
        return
    named = _host_port(host, "http")
    if named is None or not is_loopback(named[0]):
        raise ApiError(421, f"Host {host!r} is not a loopback name: {command} without API keys "
                            "answers only requests addressed to localhost, 127.0.0.1 or [::1] "
                            "(a guard against DNS rebinding); use one of those in the URL, or "
                            "set API keys to reach it by another name")


def origin_middleware(command: str, loopback_only: bool) -> Any:
    """The checks of this module, before any route runs (``loopback_only``: a server without
    keys, which listens on loopback only)."""

    @web.middleware
    async def origin(request: web.Request, handler: Any) -> web.StreamResponse:
        host = request.headers.get("Host")
        if loopback_only:
            check_loopback_host(command, host)
        check_origin(command, request.headers.get("Origin"), host)
        return await handler(request)

    return origin
