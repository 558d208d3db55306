"""API keys and the projects each may read or write, for ``engine serve`` and ``engine relay``.

Keys never come from the command line (``ps`` shows it to every user of the machine):

- ``ENGINE_API_KEY``: one key that may read and write every project (``engine serve`` only;
  for the relay it is the key it delivers upstream with);
- a keys file (``--keys-file PATH`` or ``ENGINE_KEYS_FILE``), owner-only like an ssh key,
  one key per line::

      # key                              access  projects (fnmatch patterns, comma-separated)
      3f9c…e1                            rw      team-a/*,shared/evals
      77b2…0c                            ro      team-a/dashboards

  ``rw`` reads and writes, ``ro`` only reads. Clients send a key as weave does: HTTP Basic
  with user ``api`` and the key as password.

With keys, every route needs one (``engine serve``'s ``GET /health`` and ``GET /ready``
excepted: liveness and readiness probes carry no key, and the answers name nothing but the
store kind, or why the store does not answer), and a route touching
a project the key does not grant is a 403 naming the project. Without keys, the server
listens on loopback only.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import dataclasses
import fnmatch
import hmac
import ipaddress
import os
import stat
from pathlib import Path

from engine.common._errors import ConfigError
from engine.server._body import ApiError

KEY_ENV = "ENGINE_API_KEY"
KEYS_FILE_ENV = "ENGINE_KEYS_FILE"
_AUTH_HEADERS = {"WWW-Authenticate": 'Basic realm="engine"'}
_ACCESS = {"rw": True, "ro": False}


@dataclasses.dataclass(frozen=True)
class Grant:
    """What one key may do: ``patterns`` of project ids, and whether it may write."""

    label: str  # where the key came from, for messages (never the key)
    patterns: tuple[str, ...]
    writable: bool

    def allows(self, project_id: str, write: bool) -> bool:
        if write and not self.writable:
            return False
        return any(fnmatch.fnmatchcase(project_id, p) for p in self.patterns)

    def check(self, project_id: str, write: bool, field: str = "project_id") -> None:
        if not self.allows(project_id, write):
            verb = "write" if write else "read"
            raise ApiError(403, f"{field}: this API key ({self.label}) may not {verb} "
                                f"project {project_id!r}")  # fmt: skip


# the grant of a request that carries no key on a route that needs none: no project at all
NO_KEY = Grant("no key", (), False)
# the grant of the request being handled (each aiohttp request runs in a task of its own)
CURRENT_GRANT: contextvars.ContextVar[Grant | None] = contextvars.ContextVar("grant", default=None)


class KeyRing:
    """The keys a server accepts; :meth:`grant` checks a request's ``Authorization``."""

    def __init__(self, keys: dict[str, Grant]) -> None:
        if not keys:
            raise ConfigError("keys", "no API keys given")
        self._keys = keys

    def __len__(self) -> int:
        return len(self._keys)

    def grant(self, authorization: str | None) -> Grant:
        key = _basic_key(authorization)
        found = None
        for known, grant in self._keys.items():  # every key compared: no timing hint
            if hmac.compare_digest(known.encode(), key.encode()):
                found = grant
        if found is None:
            raise ApiError(401, "invalid API key", _AUTH_HEADERS)
        return found

    def grant_for(self, authorization: str | None, route: tuple[str, str],
                  open_routes: frozenset[tuple[str, str]]) -> Grant:
        """A request's grant: :data:`NO_KEY` (which reaches no project) for a keyless
        request to one of the ``open_routes`` (method, path) -- a monitoring probe --, else
        :meth:`grant` (a key that is sent is always checked)."""
        if authorization is None and route in open_routes:
            return NO_KEY
        return self.grant(authorization)


def _basic_key(authorization: str | None) -> str:
    """The key of HTTP Basic ``api:<key>`` (the real server's scheme); never echoed."""
    if not authorization:
        raise ApiError(
            401, "missing Authorization: HTTP Basic with user 'api' and the API key", _AUTH_HEADERS
        )
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        raise ApiError(401, f"unsupported auth scheme {scheme!r}; use HTTP Basic", _AUTH_HEADERS)
    try:
        user, _, key = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise ApiError(401, "malformed HTTP Basic credentials", _AUTH_HEADERS) from None
    if user != "api":
        raise ApiError(401, "HTTP Basic user must be 'api'", _AUTH_HEADERS)
    return key


def read_keys_file(path: Path) -> dict[str, Grant]:
    """Parse a keys file (module doc); refuses one that group or others may read."""
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as exc:
        raise ConfigError("keys_file", f"cannot read {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError("keys_file", f"{path} is readable by others (mode {oct(mode & 0o777)}): "
                                       f"chmod 600 {path}")  # fmt: skip
    keys: dict[str, Grant] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"{path}:{number}"
        if len(fields) != 3 or fields[1] not in _ACCESS:
            raise ConfigError("keys_file", f"{where}: expected '<key> rw|ro <project,...>'")
        key, access, projects = fields
        patterns = tuple(p for p in projects.split(",") if p)
        if not patterns:
            raise ConfigError("keys_file", f"{where}: no project patterns")
        keys[key] = Grant(f"{path.name} line {number}", patterns, _ACCESS[access])
    return keys


def load_key_ring(keys_file: str | Path | None, *, env_key: bool = True) -> KeyRing | None:
    """The keys of a keys file (argument, else ``$ENGINE_KEYS_FILE``) and, when ``env_key``,
    ``$ENGINE_API_KEY`` (every project); None when there are none."""
    keys: dict[str, Grant] = {}
    path = keys_file or os.environ.get(KEYS_FILE_ENV)
    if path:
        keys.update(read_keys_file(Path(path)))
    if env_key and (key := os.environ.get(KEY_ENV)):
        keys[key] = Grant(f"${KEY_ENV}", ("*",), True)
    return KeyRing(keys) if keys else None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(command: str, host: str, keys: KeyRing | None, open_routes: str = "") -> str:
    """Refuse to listen beyond loopback without keys; the line to print at start
    (``open_routes``: the routes that need no key, as the line names them)."""
    if keys is not None:
        but = f" but {open_routes}" if open_routes else ""
        return f"{command}: {len(keys)} API key(s); every route{but} needs one"
    if not is_loopback(host):
        raise ConfigError("host", f"{command} will not listen on {host} without API keys: anyone "
                          f"who reaches it could read and write every project. Set ${KEY_ENV} "
                          f"or a keys file (--keys-file, ${KEYS_FILE_ENV}), or listen on 127.0.0.1")  # fmt: skip
    return (f"{command}: no API keys, so listening on loopback only; any local process may "
            f"read and write every project (set ${KEY_ENV} or --keys-file to require keys)")
