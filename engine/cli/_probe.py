"""Synchronous look at a trace server before a command relies on it: ``/server_info``.

A wrong host, port or path otherwise shows up only later as retries or dead letters; here it
is one clear error at start (what answered, and what to change).
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import urllib.error
import urllib.request
from typing import Any, NamedTuple

from engine.cli._args import CommandFailed
from engine.common._auth import basic_auth, key_refused, url_credentials
from engine.common._http import ProxyChoice, choose_proxy, describe_os_error, urllib_opener
from engine.common._redact import redact_url

DEFAULT_TIMEOUT_S = 10.0
log = logging.getLogger("engine.cli")


class Unreachable(CommandFailed):
    """No answer at all: refused, unknown host, timeout."""


class Answer(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": basic_auth(api_key)} if api_key else {}


def post_json(url: str, body: Any, api_key: str | None = None,
              timeout_s: float = DEFAULT_TIMEOUT_S) -> Answer:
    """``POST`` of ``body`` as JSON with the key's header; an answer as :func:`request`."""
    return request(url, data=json.dumps(body).encode(), timeout_s=timeout_s,
                   headers={"Content-Type": "application/json", **auth_headers(api_key)})


def request(url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None,
            timeout_s: float = DEFAULT_TIMEOUT_S) -> Answer:
    """One HTTP request; error statuses are answers, no answer at all is ``CommandFailed``.
    Credentials in ``url`` (``https://api:KEY@host``) are sent as the sender sends them."""
    bare_url, url_auth = url_credentials(url)
    headers = {**(headers or {}), **({"Authorization": url_auth} if url_auth else {})}
    req = urllib.request.Request(bare_url, data=data, headers=headers,
                                 method="POST" if data is not None else "GET")
    proxy = choose_proxy(bare_url)
    try:
        with urllib_opener(bare_url, proxy).open(req, timeout=timeout_s) as resp:
            return Answer(resp.status, dict(resp.headers.items()), resp.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, dict(exc.headers.items()), exc.read())
    except (urllib.error.URLError, OSError) as exc:
        raise Unreachable(f"cannot reach {redact_url(url)}: {_why(exc, proxy)}") from exc
    except http.client.HTTPException as exc:  # an answer cut short: a server stopping
        raise Unreachable(f"cannot reach {redact_url(url)}: its answer was cut short "
                          f"({type(exc).__name__})") from exc


def _why(exc: BaseException, proxy: ProxyChoice) -> str:
    reason = getattr(exc, "reason", exc)
    said = describe_os_error(reason, proxy) if isinstance(reason, BaseException) else None
    if said:
        return said
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is the server running on that host and port?)"
    if isinstance(reason, socket.gaierror):
        return f"unknown host ({reason.strerror})"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return "no answer in time (a firewall, or the wrong port?)"
    return str(reason)


def server_info(base_url: str, api_key: str | None = None,
                timeout_s: float = DEFAULT_TIMEOUT_S, *,
                key_from: str = "$ENGINE_API_KEY or $WANDB_API_KEY") -> dict[str, Any]:
    """``GET {base_url}/server_info`` as a dict; ``CommandFailed`` names what is wrong
    (``key_from``: where the command took ``api_key`` from, or would look for one)."""
    answer = request(f"{base_url}/server_info", headers=auth_headers(api_key), timeout_s=timeout_s)
    in_url = url_credentials(base_url)[1] is not None
    base_url = redact_url(base_url)
    if answer.status == 404:
        raise CommandFailed(
            f"{base_url}/server_info answered 404: {base_url} is not the base URL of a trace "
            "server (wrong path? engine serve's is http://HOST:PORT, hosted Weave's "
            "https://trace.wandb.ai)")
    if answer.status in (401, 403):
        raise CommandFailed(key_refused(base_url, answer.status, in_url=in_url,
                                        has_key=bool(api_key), key_from=key_from))
    if answer.status >= 400:
        raise CommandFailed(f"{base_url}/server_info answered HTTP {answer.status}: "
                            f"{answer.body[:200].decode('utf-8', 'replace')}")
    try:
        info = json.loads(answer.body)
    except ValueError:
        info = None
    if not isinstance(info, dict):
        raise CommandFailed(f"{base_url}/server_info did not answer JSON: {base_url} is not a "
                            "trace server (wrong host, port or path?)")
    return info


def check_server(base_url: str, api_key: str | None, what: str, meanwhile: str, *,
                 key_from: str = "$ENGINE_API_KEY or $WANDB_API_KEY") -> None:
    """A wrong path, something that is not a trace server, or a refused key stops a command
    at start; a server that is down does not (``meanwhile`` says what happens instead)."""
    try:
        server_info(base_url, api_key, key_from=key_from)
    except Unreachable as exc:
        log.warning("%s; %s", exc, meanwhile)
    except CommandFailed as exc:
        raise CommandFailed(f"{what}: {exc}") from exc
