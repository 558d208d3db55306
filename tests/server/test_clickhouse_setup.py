"""ClickHouse store set-up: --store URLs and credentials, versioned migrations."""

import clickhouse_connect
import pytest

from engine.common._errors import ConfigError
from engine.server.clickhouse import ClickHouseStore, parse_store_url
from engine.server.clickhouse._migrate import bundled, migrate
from tests.server.clickhouse_fixtures import PASSWORD, clickhouse_server, clickhouse_url  # noqa: F401
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
])  # fmt: skip
def test_bad_store_urls_are_refused_naming_the_problem(url, says):
    with pytest.raises(ConfigError, match=says):
        parse_store_url(url)


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
