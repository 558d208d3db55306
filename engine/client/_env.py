"""Where ``from_env`` finds the servers and the key (WIRE.md §1); every variable named here.

- ``WF_TRACE_SERVER_URL``: the trace server; else derived from the W&B base URL:
  ``https://trace.wandb.ai`` for ``https://api.wandb.ai``, otherwise ``<base>/traces``.
- ``WANDB_BASE_URL``: the W&B API (default ``https://api.wandb.ai``).
- ``WANDB_API_KEY``: the key; else the ``~/.netrc`` entry (``$NETRC`` if set) for the
  W&B base host.
"""

from __future__ import annotations

import netrc
import os
from collections.abc import Mapping
from dataclasses import dataclass

import yarl

__all__ = ["EnvSettings", "settings_from_env"]

TRACE_SERVER_URL_VAR = "WF_TRACE_SERVER_URL"
WANDB_BASE_URL_VAR = "WANDB_BASE_URL"
WANDB_API_KEY_VAR = "WANDB_API_KEY"
NETRC_VAR = "NETRC"
DEFAULT_WANDB_BASE_URL = "https://api.wandb.ai"
HOSTED_TRACE_SERVER_URL = "https://trace.wandb.ai"


@dataclass(frozen=True)
class EnvSettings:
    trace_server_url: str
    wandb_base_url: str
    api_key: str | None

    def __repr__(self) -> str:  # never show the key
        key = "***" if self.api_key else None
        return (f"EnvSettings(trace_server_url={self.trace_server_url!r}, "
                f"wandb_base_url={self.wandb_base_url!r}, api_key={key})")


def settings_from_env(environ: Mapping[str, str] | None = None) -> EnvSettings:
    env = os.environ if environ is None else environ
    base = (env.get(WANDB_BASE_URL_VAR) or DEFAULT_WANDB_BASE_URL).rstrip("/")
    trace = env.get(TRACE_SERVER_URL_VAR) or _trace_url_for(base)
    key = env.get(WANDB_API_KEY_VAR) or _netrc_key(base, env.get(NETRC_VAR))
    return EnvSettings(trace_server_url=trace.rstrip("/"), wandb_base_url=base, api_key=key)


def _trace_url_for(wandb_base_url: str) -> str:
    if wandb_base_url == DEFAULT_WANDB_BASE_URL:
        return HOSTED_TRACE_SERVER_URL
    return f"{wandb_base_url}/traces"


def _netrc_key(wandb_base_url: str, netrc_path: str | None) -> str | None:
    host = yarl.URL(wandb_base_url).host
    path = netrc_path or os.path.join(os.path.expanduser("~"), ".netrc")
    if not host or not os.path.exists(path):
        return None
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (netrc.NetrcParseError, OSError):
        return None  # an unreadable netrc means "no key", as for wandb
    return entry[2] if entry and entry[2] else None
