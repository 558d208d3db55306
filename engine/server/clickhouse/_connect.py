"""Where the ClickHouse store lives: ``--store`` URLs, credentials, the client.

- ``clickhouse://USER@HOST:PORT/DB`` — a ClickHouse server over HTTP (``clickhouses://``
  for HTTPS); several ``engine serve`` processes may share it. The password comes from
  ``$ENGINE_CLICKHOUSE_PASSWORD`` or from the file named by
  ``$ENGINE_CLICKHOUSE_PASSWORD_FILE`` (or ``--clickhouse-password-file``), never from
  the URL: a URL is argv, which every user of the machine can read.
- ``chdb:///PATH/TO/FOLDER`` (database ``engine``; ``chdb:///FOLDER?database=DB``) —
  ClickHouse embedded in this one process (PyPI's ``chdb-core``): the same store without a
  server, for one machine.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from engine.common._env import CLICKHOUSE_PING_TIMEOUT_S as PING_TIMEOUT_ENV
from engine.common._env import CLICKHOUSE_STATEMENT_TIMEOUT_S as STATEMENT_TIMEOUT_ENV
from engine.common._errors import ConfigError

PASSWORD_ENV = "ENGINE_CLICKHOUSE_PASSWORD"
PASSWORD_FILE_ENV = "ENGINE_CLICKHOUSE_PASSWORD_FILE"
# /ready's query and the first one at start: a server that does not answer within this is
# said to be out of reach
DEFAULT_PING_TIMEOUT_S = 10.0
# every other statement: a server silent this long is out of reach too (503, sent again).
# Not a bound on a statement's whole run: clickhouse-connect asks ClickHouse for a progress
# header every max(10, timeout - 5) s, so a server still working on a long insert or read
# keeps it alive; a 50,000-part insert (the largest group) takes ~0.6 s through the local
# server. Below the engine sender's request_timeout_s (60), so the sender hears the 503.
DEFAULT_STATEMENT_TIMEOUT_S = 30.0
DEFAULT_DATABASE = "engine"
_SCHEMES = {"clickhouse": "http", "clickhouses": "https"}
_DEFAULT_PORTS = {"http": 8123, "https": 8443}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Target:
    """A parsed ``--store`` URL; ``password`` is read from the environment or a file."""

    interface: str  # "http", "https" or "chdb"
    database: str
    host: str = ""
    port: int = 0
    user: str = "default"
    password: str = dataclasses.field(default="", repr=False)
    path: str = ""  # the chdb folder
    ping_timeout_s: float = DEFAULT_PING_TIMEOUT_S
    statement_timeout_s: float = DEFAULT_STATEMENT_TIMEOUT_S

    def describe(self) -> str:
        """Where, for logs: never the password."""
        if self.interface == "chdb":
            return f"chdb:{self.path} database={self.database}"
        return f"{self.interface}://{self.user}@{self.host}:{self.port}/{self.database}"


def is_clickhouse_url(store: str) -> bool:
    return store.split("://", 1)[0] in (*_SCHEMES, "chdb") and "://" in store


def parse_store_url(url: str, password_file: Path | None = None) -> Target:
    """``clickhouse://user@host:port/db`` or ``chdb:///folder`` as a :class:`Target`."""
    parts = urlsplit(url)
    if parts.scheme == "chdb":
        return _chdb_target(parts.path, parse_qs(parts.query))
    if parts.scheme not in _SCHEMES:
        raise ConfigError("store", f"{url!r} is not clickhouse://, clickhouses:// or chdb://")
    if parts.password is not None:
        raise ConfigError(
            "store",
            f"the URL carries a password; put it in ${PASSWORD_ENV} or a file "
            f"(${PASSWORD_FILE_ENV}, --clickhouse-password-file) instead: argv is readable by "
            "every user of the machine"
        )
    if not parts.hostname:
        raise ConfigError("store", f"{parts.scheme}://USER@HOST:PORT/DB needs a host")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError("store", f"{url!r}: the port must be a number from 1 to 65535 "
                          f"({parts.scheme}://USER@HOST:PORT/DB)") from None
    interface = _SCHEMES[parts.scheme]
    database = parts.path.strip("/") or DEFAULT_DATABASE
    _check_name(database)
    return Target(
        interface=interface, database=database, host=parts.hostname,
        port=port or _DEFAULT_PORTS[interface], user=unquote(parts.username or "default"),
        password=_password(password_file),
        ping_timeout_s=_seconds(PING_TIMEOUT_ENV, DEFAULT_PING_TIMEOUT_S),
        statement_timeout_s=_seconds(STATEMENT_TIMEOUT_ENV, DEFAULT_STATEMENT_TIMEOUT_S),
    )  # fmt: skip


def _chdb_target(path: str, query: dict[str, list[str]]) -> Target:
    if not path or path == "/":
        raise ConfigError("store", "chdb:///PATH needs the folder of the embedded database")
    database = query.get("database", [DEFAULT_DATABASE])[0]
    _check_name(database)
    return Target(interface="chdb", database=database, path=str(Path(path).resolve()))


def _check_name(database: str) -> None:
    # the name goes into CREATE DATABASE text: letters, digits and underscores only
    if not database.replace("_", "").isalnum() or not database.isascii():
        raise ConfigError("store", f"database name {database!r} must be letters, digits and '_'")


def _password(password_file: Path | None) -> str:
    named = password_file or (Path(p) if (p := os.environ.get(PASSWORD_FILE_ENV)) else None)
    if named is not None:
        try:
            return named.read_text().strip()
        except OSError as exc:
            raise ConfigError("store", f"cannot read the ClickHouse password file {named}: {exc}") from None
    return os.environ.get(PASSWORD_ENV, "")


def _seconds(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    try:
        value = float(text) if text else default
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise ConfigError(name, f"{text!r} is not a positive number of seconds")
    return value


def connect(target: Target, database: str | None, timeout_s: float | None = None,
            **settings: Any) -> Any:
    """A ``clickhouse-connect`` client on ``database`` (None: the server's default) whose
    requests give up after ``timeout_s`` (default ``target.statement_timeout_s``) without
    an answer."""
    import clickhouse_connect

    timeout_s = target.statement_timeout_s if timeout_s is None else timeout_s
    if target.interface == "chdb":
        return clickhouse_connect.get_client(
            interface="chdb", path=target.path, database=database, settings=settings
        )
    return clickhouse_connect.get_client(
        interface=target.interface, host=target.host, port=target.port,
        username=target.user, password=target.password, database=database,
        # no HTTP session: a session serialises its queries, and the store runs several at once
        autogenerate_session_id=False, settings=settings,
        connect_timeout=min(10.0, timeout_s), send_receive_timeout=timeout_s,
    )  # fmt: skip
