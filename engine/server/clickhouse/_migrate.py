"""Versioned schema migrations, run by the server when it opens the store.

``migrations/NNNN_name.sql`` files are applied in order; ``schema_migrations`` records
each version applied. Several replicas may start at once and apply the same file
together, so every statement of a migration must be idempotent (``IF NOT EXISTS``);
the record table keeps one row per version whichever replica wrote it. A database that
has a version this server does not know was migrated by a newer server: this one refuses
to start rather than write rows the newer schema may read differently, and a running one
that finds it so (:class:`SchemaWatch`: a newer replica started beside it) stops answering
200 for what it cannot store correctly.

A rolling upgrade runs old and new servers on one database for a while: the old ones notice
the newer schema within :data:`SCHEMA_CHECK_EVERY_S`, and until then keep writing as they
did (a server of schema 2 predates the watch and writes on). So a migration must keep the
previous schema's writes landing where the new code reads them (0003 and 0005: the view
from ``call_parts`` into ``call_part_log``), never drop what an older server writes into.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

import msgspec

from engine.common._errors import ConfigError

_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")
_RECORD_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version UInt32,
    name String,
    applied_at DateTime64(6, 'UTC') DEFAULT now64(6)
) ENGINE = ReplacingMergeTree
ORDER BY version
"""


SCHEMA_CHECK_EVERY_S = 2.0  # how long a running server may miss a newer schema


class Migration(msgspec.Struct, frozen=True):
    version: int
    name: str
    statements: tuple[str, ...]


def _statements(sql: str) -> tuple[str, ...]:
    """The file's statements: separated by ``;`` at the end of a line, comments dropped."""
    text = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return tuple(s.strip() for s in re.split(r";\s*$", text, flags=re.MULTILINE) if s.strip())


def bundled() -> list[Migration]:
    """The migrations shipped with this server, in version order."""
    found = []
    for entry in (resources.files("engine.server.clickhouse") / "migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], _statements(entry.read_text())))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations are not numbered 1..N: {[m.version for m in found]}")
    return found


def applied_versions(client: Any) -> set[int]:
    # created only where missing: ClickHouse checks the CREATE grant even for IF NOT EXISTS
    # on a table that exists, and the run-time user of a migrated database may lack it
    if not _record_table_exists(client):
        client.command(_RECORD_TABLE)
    return {row[0] for row in client.query("SELECT DISTINCT version FROM schema_migrations").result_rows}


def _record_table_exists(client: Any) -> bool:
    """Whether engine's ``schema_migrations`` is there. One without engine's columns is
    another tool's (golang-migrate keeps ``version, dirty`` there): its versions are not
    ours, and the database is not engine's to fill. Checked before anything is created in it."""
    columns = [row[0] for row in client.query(
        "SELECT name FROM system.columns WHERE database = currentDatabase() "
        "AND table = 'schema_migrations' ORDER BY position").result_rows]  # fmt: skip
    if columns and not {"version", "name"} <= set(columns):
        raise ConfigError(
            "store",
            f"the ClickHouse database {getattr(client, 'database', '')!r} holds another tool's "
            f"schema_migrations table (columns "
            f"{', '.join(columns)}), not engine's: give engine serve a database of its own "
            "in --store"
        )
    return bool(columns)


def migrate(client: Any, migrations: list[Migration] | None = None) -> list[int]:
    """Apply what is missing on ``client``'s database; returns the versions applied now."""
    migrations = bundled() if migrations is None else migrations
    done = applied_versions(client)
    newest = max((m.version for m in migrations), default=0)
    if done and max(done) > newest:
        raise ConfigError(
            "store",
            f"the ClickHouse database is at schema version {max(done)}, newer than this "
            f"server's {newest}: upgrade engine before serving from it"
        )
    applied = []
    for migration in migrations:
        if migration.version in done:
            continue
        for statement in migration.statements:
            client.command(statement)
        client.insert("schema_migrations", [[migration.version, migration.name]],
                      column_names=["version", "name"])  # fmt: skip
        applied.append(migration.version)
    return applied


class SchemaWatch:
    """Whether a newer server migrated the database while this one runs. The database's
    schema version is read at most every ``every_s`` seconds (by the statement that finds
    it due, on whichever thread); once newer, it stays newer (schemas only move forward)."""

    def __init__(self, version: int, every_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.version = version
        self._every_s = SCHEMA_CHECK_EVERY_S if every_s is None else every_s
        self._clock = clock
        self._due_at = clock() + self._every_s  # the store migrated it just now
        self._lock = threading.Lock()
        self._newer: int | None = None

    def refusal(self, client: Any) -> str | None:
        """Why this server must not answer for the database any more, or None."""
        if self._newer is None and self._due():
            found = client.query("SELECT max(version) FROM schema_migrations").result_rows[0][0]
            if found > self.version:
                self._newer = found
        if self._newer is None:
            return None
        return (f"the ClickHouse database is at schema {self._newer}, newer than this "
                f"server's {self.version} (a newer engine serve migrated it): upgrade this "
                "server; it stores nothing more, so send the request again to an upgraded one")

    def _due(self) -> bool:
        with self._lock:
            now = self._clock()
            if now < self._due_at:
                return False
            self._due_at = now + self._every_s
            return True


def database_uuid(client: Any) -> str | None:
    """The database's UUID (new when it is recreated; Atomic databases, the default, have
    one), as :meth:`Store.store_id`; None for a database without one."""
    rows = client.query("SELECT toString(uuid) FROM system.databases "
                        "WHERE name = currentDatabase()").result_rows
    uuid = rows[0][0] if rows else None
    return None if not uuid or uuid.strip("0-") == "" else uuid
