"""weave's disk cache of server answers, one folder per store instead of one for every server.

weave 0.54.0 wraps its trace server in ``CachingMiddlewareTraceServer`` (unless
``WEAVE_USE_SERVER_CACHE=false``), a disk cache in ``$WEAVE_SERVER_CACHE_DIR``, by default
``<tmp>/weave_trace_server_cache`` for every server alike, keyed by the request alone.
``obj_create`` is cached too: once an object (a dataset, a model, an evaluation, an op)
was created on one server, creating it on another -- a fresh ``engine serve``, the same URL
over a wiped file, another port -- is answered from the cache and the object never reaches
that server. Its calls then name datasets, models and evaluations it does not have
(measured: a second run of the same ``weave.Evaluation`` against a fresh server stored the
calls and none of the evaluation, dataset or scorer objects).

Unless the user chose a folder, :func:`key_by_store` points weave at one of its own per
store: keyed by the ``store_id`` ``engine serve`` answers in ``/server_info`` (new with
each new file or database, the same for every URL of it), else by the URL.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import urllib.request

from engine.common._auth import basic_auth
from engine.common._http import urllib_opener

CACHE_ENV = "WEAVE_SERVER_CACHE_DIR"
_INFO_TIMEOUT_S = 5.0
log = logging.getLogger("engine.integrations.weave")
_ours: str | None = None  # the folder this module put in $WEAVE_SERVER_CACHE_DIR


def key_by_store(url: str, api_key: str | None) -> str | None:
    """Set ``$WEAVE_SERVER_CACHE_DIR`` to this store's folder (made 0700) unless the user
    set it; returns the folder (None: the user's choice stands). Call before weave builds
    its cache (``weave.init`` does right after the server's credentials are set)."""
    global _ours
    current = os.environ.get(CACHE_ENV)
    if current and current != _ours:
        return None
    key = store_id(url, api_key) or url.rstrip("/")
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    folder = os.path.join(cache_root(), digest)
    try:
        os.makedirs(os.path.dirname(folder), mode=0o700, exist_ok=True)
        os.makedirs(folder, mode=0o700, exist_ok=True)
    except OSError as exc:  # never into weave.init: weave's own folder stays in use
        log.warning("weave's disk cache stays shared between servers: %s is not usable (%s)",
                    folder, exc)
        return None
    os.environ[CACHE_ENV] = _ours = folder
    return folder


def cache_root() -> str:
    """The folder of the per-store folders: in the temp dir, one per user."""
    return os.path.join(tempfile.gettempdir(), f"weave_trace_server_cache-engine-{os.getuid()}")


def store_id(url: str, api_key: str | None) -> str | None:
    """The ``store_id`` the server answers in ``/server_info``; None for a server without
    one (not an engine server) or one that does not answer now."""
    request = urllib.request.Request(url.rstrip("/") + "/server_info")
    if api_key:
        request.add_header("Authorization", basic_auth(api_key))
    try:
        with urllib_opener(request.full_url).open(request, timeout=_INFO_TIMEOUT_S) as resp:
            value = json.loads(resp.read()).get("store_id")
    except (OSError, ValueError, AttributeError) as exc:
        log.debug("no store id from the server (%s): weave's cache is keyed by its URL", exc)
        return None
    return value if isinstance(value, str) and value else None
