"""ClickHouse store set-up: --store URLs and credentials, versioned migrations."""

import datetime as dt
from types import SimpleNamespace

import clickhouse_connect
import pytest

from engine.common._errors import ConfigError, EngineError
from engine.server._store import CallsQuery
from engine.server.clickhouse import ClickHouseStore, _migrate, parse_store_url
from engine.server.clickhouse._calls import call_parts, delete_parts, rename_part
from engine.server.clickhouse._connect import connect
from engine.server.clickhouse._migrate import SchemaWatch, bundled, migrate
from engine.server.clickhouse._store import _refusal
from engine.wire.calls import CompletedCallSchemaForInsert
from tests.server.clickhouse_fixtures import PASSWORD
from tests.server.clickhouse_proxy import clickhouse_proxy
from tests.server.harness import complete, run_on, serving, start


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


@pytest.mark.parametrize("variable", ["ENGINE_CLICKHOUSE_PING_TIMEOUT_S",
                                      "ENGINE_CLICKHOUSE_STATEMENT_TIMEOUT_S"])
@pytest.mark.parametrize("value", ["0", "-1", "ten", "inf"])
def test_a_timeout_that_is_no_positive_number_is_refused_naming_the_variable(
        monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=f"{variable}: .* not a positive"):
        parse_store_url("clickhouse://u@h/db")


def test_the_statement_timeout_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("ENGINE_CLICKHOUSE_STATEMENT_TIMEOUT_S", "90")
    target = parse_store_url("clickhouse://u@h/db")
    assert (target.statement_timeout_s, target.ping_timeout_s) == (90.0, 10.0)


def test_chdb_url_names_a_folder_and_defaults_the_database(tmp_path):
    target = parse_store_url(f"chdb://{tmp_path}/ch")
    assert (target.interface, target.path, target.database) == ("chdb", str(tmp_path / "ch"), "engine")


def test_migrations_apply_once_and_a_newer_schema_is_refused(clickhouse_url):
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
        clickhouse_url, rows):
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


@pytest.mark.parametrize("schema", ["none", "up to date"])
def test_a_read_only_clickhouse_user_is_refused_saying_it_must_write(clickhouse_url, schema):
    target = parse_store_url(clickhouse_url)
    if schema == "up to date":  # start-up then creates nothing, and still must not pass
        run_on("asyncio", ClickHouseStore(target).close())
    refused = pytest.raises(EngineError, match="ClickHouse user 'default' is read-only .*give "
                                               "--store a user that may write")
    # the proxy adds readonly=1 to every query, as a read-only user's profile does
    with clickhouse_proxy(target.port, "readonly") as proxy, refused:
        ClickHouseStore(parse_store_url(proxy.store_url(target.database)))


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


def test_a_user_without_ddl_grants_serves_a_schema_an_admin_created(clickhouse_url):
    """The schema made by a user that may (engine serve started once as it), then serve as a
    user granted SELECT, INSERT and ALTER DELETE only: start-up creates nothing that exists
    (ClickHouse checks CREATE grants even for IF NOT EXISTS), and writes and reads work."""
    target = parse_store_url(clickhouse_url)
    run_on("asyncio", ClickHouseStore(target).close())  # the admin's start: all migrations

    async def scenario(store_url):
        async with serving(None, store=store_url) as api:
            stored = await api.post("/v2/ent/proj/calls/complete",
                                    {"batch": [complete(f"c{i}") for i in range(100)]})
            small = await api.post("/call/start", {"start": start("s")})
            return stored[0], small[0], (await api.get("/ready"))[0], await api.query("ent/proj")

    with clickhouse_proxy(target.port, "no_ddl") as proxy:
        stored, small, ready, calls = run_on("asyncio", scenario(proxy.store_url(target.database)))
    assert (stored, small, ready) == (200, 200, 200)
    assert sorted(c["id"] for c in calls) == sorted([f"c{i}" for i in range(100)] + ["s"])


@pytest.mark.parametrize("schema", ["none", "an older one"])
def test_a_user_without_ddl_grants_is_told_what_to_grant_where_the_schema_needs_migrating(
        clickhouse_url, schema):
    target = parse_store_url(clickhouse_url)
    if schema == "an older one":
        connect(target, None).command(f"CREATE DATABASE `{target.database}`")
        migrate(connect(target, target.database), bundled()[:-1])
    with clickhouse_proxy(target.port, "no_ddl") as proxy, pytest.raises(EngineError) as refused:
        ClickHouseStore(parse_store_url(proxy.store_url(target.database)))
    why = str(refused.value)
    assert why.startswith("ClickHouse user 'default' lacks a right engine serve needs"), why
    assert "GRANT it CREATE DATABASE" in why and "start engine serve once as a user" in why, why
    assert "\n" not in why and PASSWORD not in why


def test_calls_stored_under_the_first_layout_move_to_the_part_log(clickhouse_url):
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


# what a server of schema 2 (commit 90b977c, before migration 0003) inserted, and how:
# _store._insert_parts, asynchronous for batches of up to 64 parts
_SCHEMA_2_PART_COLUMNS = [
    "project_id", "id", "version", "has_start", "has_end", "has_name", "is_delete",
    "op_name", "display_name", "trace_id", "parent_id", "thread_id", "turn_id", "started_at_us",
    "attributes", "inputs", "otel_dump", "wb_user_id", "wb_run_id", "wb_run_step",
    "ended_at_us", "exception", "output", "summary", "wb_run_step_end",
]  # fmt: skip
_SCHEMA_2_ASYNC_INSERT = {"async_insert": 1, "wait_for_async_insert": 1}


@pytest.mark.parametrize("database", ["fresh", "past 0003 without the view"])
def test_a_schema_2_server_still_running_writes_calls_this_one_reads(clickhouse_url, database):
    """A rolling upgrade: a server of schema 2 keeps inserting into call_parts after a newer
    one migrated the database; its calls, renames and deletes land in the part log, each
    part once, on a fresh database as on one that applied 0003 before it kept that view."""
    target = parse_store_url(clickhouse_url)
    connect(target, None).command(f"CREATE DATABASE IF NOT EXISTS `{target.database}`")
    client = connect(target, target.database)
    if database == "past 0003 without the view":
        migrate(client, bundled()[:4])
        client.command("DROP VIEW IF EXISTS call_parts_to_log")
    store = ClickHouseStore(target)
    t0 = dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)
    calls = [CompletedCallSchemaForInsert(
        project_id="ent/old", id=i, op_name="op", trace_id="t", started_at=t0, ended_at=t0,
        attributes={}, inputs={"i": i}, output=i, summary={},
    ) for i in ("x", "y")]  # fmt: skip
    for body, settings in ((call_parts([], [], calls, 10)[0], _SCHEMA_2_ASYNC_INSERT),
                           (rename_part("ent/old", "x", "renamed", 20), None),
                           (delete_parts("ent/old", ["y"], 30), None)):  # fmt: skip
        client.raw_insert("call_parts", _SCHEMA_2_PART_COLUMNS, insert_block=body,
                          fmt="JSONCompactEachRow", settings=settings)  # fmt: skip

    async def read():
        try:
            return [c async for page in store.query_calls(CallsQuery(project_id="ent/old")) for c in page]
        finally:
            await store.close()

    got = run_on("asyncio", read())
    assert [(c["id"], c["display_name"], bytes(c["output"])) for c in got] == [("x", "renamed", b'"x"')]
    parts = client.query("SELECT id, version FROM call_part_log ORDER BY version").result_rows
    assert parts == [("x", 10), ("y", 11), ("x", 20), ("y", 30)]


def test_a_running_server_answers_503_once_a_newer_server_migrated_its_database(clickhouse_url,
                                                                                monkeypatch):  # fmt: skip
    """The next breaking migration: a newer replica migrates the database under a running
    one, which then refuses writes (small, bulk) and /ready with why, rather than answering
    200 for calls the newer schema may not read."""
    monkeypatch.setattr(_migrate, "SCHEMA_CHECK_EVERY_S", 0.0)  # every statement looks
    target = parse_store_url(clickhouse_url)
    newest = bundled()[-1].version

    async def scenario():
        async with serving(None, store=clickhouse_url) as api:
            assert (await api.post("/v2/ent/proj/calls/complete", {"batch": [complete("a")]}))[0] == 200
            assert (await api.get("/ready"))[0] == 200
            client = connect(target, target.database)
            client.insert("schema_migrations", [[newest + 1, "from_a_newer_server"]],
                          column_names=["version", "name"])  # fmt: skip
            bulk = {"batch": [complete(f"b{i}") for i in range(100)]}
            return client, [await api.post("/v2/ent/proj/calls/complete", {"batch": [complete("c")]}),
                            await api.post("/call/start", {"start": start("d")}),
                            await api.post("/v2/ent/proj/calls/complete", bulk),
                            await api.get("/ready")]  # fmt: skip

    client, answers = run_on("asyncio", scenario())
    why = f"the ClickHouse database is at schema {newest + 1}, newer than this server's {newest}"
    assert [(status, why in body.get("reason", "")) for status, body in answers] == [(503, True)] * 4
    assert client.query("SELECT DISTINCT id FROM call_part_log").result_rows == [("a",)]


def test_a_running_server_reads_the_schema_version_at_most_every_few_seconds():
    now, asked = [0.0], []

    def query(sql):
        asked.append(sql)
        return SimpleNamespace(result_rows=[[client.version]])

    client = SimpleNamespace(version=5, query=query)
    watch = SchemaWatch(5, every_s=2.0, clock=lambda: now[0])
    assert watch.refusal(client) is None and asked == []  # it migrated the database just now
    now[0] = 2.0
    assert watch.refusal(client) is None and len(asked) == 1
    client.version, now[0] = 6, 3.9
    assert watch.refusal(client) is None and len(asked) == 1
    now[0] = 4.0
    assert "at schema 6, newer than this server's 5" in watch.refusal(client)
    now[0] = 100.0
    assert "at schema 6" in watch.refusal(client) and len(asked) == 2  # newer for good
