"""ClickHouse store set-up: --store URLs and credentials, versioned migrations."""

import datetime as dt

import clickhouse_connect
import pytest

from engine.common._errors import ConfigError, EngineError
from engine.server._store import CallsQuery
from engine.server.clickhouse import ClickHouseStore, parse_store_url
from engine.server.clickhouse._calls import call_parts, delete_parts, rename_part
from engine.server.clickhouse._connect import connect
from engine.server.clickhouse._migrate import bundled, migrate
from engine.server.clickhouse._store import _refusal
from engine.wire.calls import CompletedCallSchemaForInsert
from tests.server.clickhouse_fixtures import PASSWORD, clickhouse_server, clickhouse_url  # noqa: F401
from tests.server.clickhouse_proxy import clickhouse_proxy
from tests.server.harness import run_on


def test_store_url_takes_user_host_port_and_database_and_password_from_env(monkeypatch):
    monkeypatch.setenv("ENGINE_CLICKHOUSE_PASSWORD", "s3cret")
    target = parse_store_url("clickhouse://engine@ch.internal:9123/traces")
    assert (target.interface, target.user, target.host, target.port, target.database) == (
        "http", "engine", "ch.internal", 9123, "traces")  # fmt: skip
    assert target.password == "s3cret" and "s3cret" not in repr(target) + target.describe()


def test_store_url_password_file_wins_over_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ENGINE_CLICKHOUSE_PASSWORD", "from-env")
    (tmp_path / "pw").write_text("from-file\n")
    assert parse_store_url("clickhouse://u@h/db", tmp_path / "pw").password == "from-file"


@pytest.mark.parametrize(("url", "says"), [
    ("clickhouse://u:pw@h:8123/db", "carries a password"),
    ("clickhouse://h:8123/bad-name", "must be letters"),
    ("postgres://h/db", "is not clickhouse://"),
    ("chdb://", "needs the folder"),
    ("clickhouse://u@127.0.0.1:abc/db", "the port must be a number"),
])  # fmt: skip
def test_bad_store_urls_are_refused_naming_the_problem(url, says):
    with pytest.raises(ConfigError, match=says):
        parse_store_url(url)


@pytest.mark.parametrize("value", ["0", "-1", "ten", "inf"])
def test_a_ping_timeout_that_is_no_positive_number_is_refused_naming_the_variable(
        monkeypatch, value):
    monkeypatch.setenv("ENGINE_CLICKHOUSE_PING_TIMEOUT_S", value)
    with pytest.raises(ConfigError, match="ENGINE_CLICKHOUSE_PING_TIMEOUT_S: .* not a positive"):
        parse_store_url("clickhouse://u@h/db")


def test_chdb_url_names_a_folder_and_defaults_the_database(tmp_path):
    target = parse_store_url(f"chdb://{tmp_path}/ch")
    assert (target.interface, target.path, target.database) == ("chdb", str(tmp_path / "ch"), "engine")


def test_migrations_apply_once_and_a_newer_schema_is_refused(clickhouse_url):  # noqa: F811
    target = parse_store_url(clickhouse_url)
    store = ClickHouseStore(target)
    run_on("asyncio", store.close())
    assert store.migrated == [m.version for m in bundled()]
    client = clickhouse_connect.get_client(host=target.host, port=target.port, password=PASSWORD,
                                           database=target.database, autogenerate_session_id=False)  # fmt: skip
    assert migrate(client) == []  # a second server applies nothing
    client.insert("schema_migrations", [[999, "from_the_future"]], column_names=["version", "name"])
    with pytest.raises(ConfigError, match="schema version 999, newer than"):
        ClickHouseStore(target)


@pytest.mark.parametrize("rows", [[], [[20240101120000, 0]]])
def test_a_database_holding_another_tools_schema_migrations_is_refused_untouched(
        clickhouse_url, rows):  # noqa: F811
    """golang-migrate's record table (``version Int64, dirty UInt8``): not engine's schema
    version, and the database is not engine's to fill."""
    target = parse_store_url(clickhouse_url)
    client = connect(target, None)
    client.command(f"CREATE DATABASE `{target.database}`")
    client.command(f"CREATE TABLE `{target.database}`.schema_migrations (version Int64, "
                   "dirty UInt8) ENGINE = MergeTree ORDER BY version")
    if rows:
        client.insert(f"`{target.database}`.schema_migrations", rows,
                      column_names=["version", "dirty"])
    with pytest.raises(ConfigError, match="holds another tool's schema_migrations table "
                                          r"\(columns version, dirty\).*a database of its own"):
        ClickHouseStore(target)
    tables = client.query("SELECT name FROM system.tables WHERE database = {db:String}",
                          parameters={"db": target.database}).result_rows
    assert tables == [("schema_migrations",)]


def test_a_read_only_clickhouse_user_is_refused_saying_it_must_write(
        clickhouse_server, monkeypatch):  # noqa: F811
    monkeypatch.setenv("ENGINE_CLICKHOUSE_PASSWORD", PASSWORD)
    refused = pytest.raises(EngineError, match="ClickHouse user 'default' is read-only .*give "
                                               "--store a user that may write")
    # the proxy adds readonly=1 to every query, as a read-only user's profile does
    with clickhouse_proxy(clickhouse_server.port, "readonly") as proxy, refused:
        ClickHouseStore(parse_store_url(proxy.store_url("read_only")))


def test_a_clickhouse_user_without_a_right_is_told_what_to_grant(monkeypatch):
    from clickhouse_connect.driver.exceptions import DatabaseError

    monkeypatch.setenv("ENGINE_CLICKHOUSE_PASSWORD", "pw")
    target = parse_store_url("clickhouse://engine@ch:8123/traces")
    denied = DatabaseError("Code: 497. DB::Exception: engine: Not enough privileges. To "
                           "execute this query, it's necessary to have the grant CREATE "
                           "DATABASE ON traces.* (ACCESS_DENIED)", code=497)
    why = _refusal(target, denied)
    assert why is not None and why.startswith("ClickHouse user 'engine' lacks a right"), why
    assert "GRANT it CREATE DATABASE" in why and "`traces`.*" in why and "pw" not in why


def test_calls_stored_under_the_first_layout_move_to_the_part_log(clickhouse_url):  # noqa: F811
    """Migration 0003: calls written through 0001's view (call_parts -> calls_merged) read
    back unchanged, renames, deletes and arrival order included."""
    target = parse_store_url(clickhouse_url)
    client = connect(target, None)
    client.command(f"CREATE DATABASE IF NOT EXISTS `{target.database}`")
    client = connect(target, target.database)
    migrate(client, bundled()[:2])
    t0 = dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)
    calls = [CompletedCallSchemaForInsert(
        project_id="ent/old", id=i, op_name="op", trace_id="t", started_at=t0, ended_at=t0,
        attributes={}, inputs={"i": i}, output=i, summary={},
    ) for i in ("b", "a", "c")]  # fmt: skip
    for body in (call_parts([], [], calls, 10)[0], rename_part("ent/old", "a", "renamed", 20),
                 delete_parts("ent/old", ["c"], 30)):  # fmt: skip
        client.raw_insert("call_parts", None, insert_block=body, fmt="JSONCompactEachRow")

    async def read():
        store = ClickHouseStore(target)  # applies 0003 and those after it
        try:
            assert store.migrated == [m.version for m in bundled()[2:]]
            return [c async for page in store.query_calls(CallsQuery(project_id="ent/old")) for c in page]
        finally:
            await store.close()

    got = run_on("asyncio", read())
    assert [(c["id"], c["display_name"], bytes(c["output"])) for c in got] == [
        ("b", None, b'"b"'), ("a", "renamed", b'"a"')]  # fmt: skip
