"""Pass-through proxy for every route the relay does not ingest itself (reads, objects,
files, ``/graphql``, the trace browser's pages): bodies stream both ways untouched (compressed
bodies stay compressed), the client's own ``Authorization`` goes upstream, hop-by-hop headers
drop, and so do ``Host`` and ``Origin``: the relay checked the browser's ``Origin`` against its
own ``Host`` (engine.server._origin), and the upstream, comparing it with its own, would
refuse the trace browser's requests through the relay. ``/server_info`` is the upstream's,
with what concerns the relay itself put right: the encodings the relay accepts and the
machine it runs on (a client decides compression by them), and that it takes
``/call/upsert_batch`` for every project (a client sends the starts it sends before their
ends in upsert batches, not one v2 request each).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from engine.common._http import describe_client_error
from engine.common._machine import machine_token
from engine.common._redact import redact_url
from engine.relay._state import RELAY
from engine.server._body import ACCEPTED_ENCODINGS, error_response

# RFC 9110 §7.6.1 connection-specific headers, plus Host (the upstream's own is set) and
# Origin (checked here against the relay's own Host; see the module's docstring)
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade", "host", "origin",
})  # fmt: skip
_CHUNK_BYTES = 64 << 10
log = logging.getLogger("engine.relay")


def forward_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """End-to-end headers only; also drops any header the Connection header names."""
    named = {h.strip().lower() for h in headers.get("Connection", "").split(",") if h.strip()}
    return {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP | named}


def _upstream(request: web.Request) -> Any:
    """The request as it goes upstream (``async with`` it): same method, path, query and
    body, end-to-end headers only, no redirect followed."""
    state = request.app[RELAY]
    assert state.session is not None, "the relay's client session starts with the app"
    state.counters.proxied_requests += 1
    return state.session.request(
        request.method, state.upstream + request.rel_url.raw_path_qs,
        headers=forward_headers(request.headers),
        data=request.content if request.body_exists else None, allow_redirects=False)


def _unreachable(request: web.Request, exc: BaseException) -> web.Response:
    """502 with the reason; the first failure after an answer is also one log line (the
    operator hears of an untrusted certificate or a refusing proxy, not only the client), the
    rest counted until the upstream answers again (:func:`_answered`)."""
    state = request.app[RELAY]
    state.counters.proxy_errors += 1
    what = describe_client_error(exc, state.route.shown) if isinstance(exc, aiohttp.ClientError) \
        else "no answer in time"
    if not state.upstream_failing:
        log.warning("upstream %s unreachable for %s %s: %s; proxied requests answer "
                    "502 until it answers again", redact_url(state.upstream), request.method,
                    request.rel_url.path, what)
    state.upstream_failing += 1
    return error_response(502, f"upstream {redact_url(state.upstream)} unreachable: {what}")


def _answered(request: web.Request) -> None:
    state = request.app[RELAY]
    if state.upstream_failing:
        log.warning("upstream %s answers again (%d proxied request(s) answered 502 "
                    "meanwhile)", redact_url(state.upstream), state.upstream_failing)
        state.upstream_failing = 0


async def proxy(request: web.Request) -> web.StreamResponse:
    try:
        async with _upstream(request) as upstream:
            _answered(request)
            return await _stream_back(request, upstream)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return _unreachable(request, exc)


async def server_info(request: web.Request) -> web.StreamResponse:
    """The upstream's ``/server_info`` (the client's key checked there), telling the relay's
    own encodings and machine; any answer that is not a JSON object passes as it came."""
    try:
        async with _upstream(request) as upstream:
            _answered(request)
            if upstream.status != 200 or upstream.headers.get("Content-Encoding"):
                return await _stream_back(request, upstream)
            body = await upstream.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return _unreachable(request, exc)
    try:
        info = msgspec.json.decode(body)
    except msgspec.DecodeError:
        info = None
    if not isinstance(info, dict):
        return web.Response(body=body, content_type="application/json")
    info["accepts_encodings"] = list(ACCEPTED_ENCODINGS)
    # the relay takes upsert batches for every project whatever its upstream takes: it
    # writes their starts and ends into its rings, and its own sender pairs them and sends
    # them by the routes the upstream takes
    info["accepts_upsert_batch"] = True
    info.pop("machine", None)
    token = machine_token()
    if token is not None:
        info["machine"] = token
    return web.Response(body=msgspec.json.encode(info), content_type="application/json")


async def _stream_back(request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                  headers=forward_headers(upstream.headers))
    await response.prepare(request)
    try:
        async for chunk in upstream.content.iter_chunked(_CHUNK_BYTES):
            await response.write(chunk)
    except (aiohttp.ClientError, TimeoutError):
        # the status line is already out: all that is left is to cut the body short
        request.app[RELAY].counters.proxy_errors += 1
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response
