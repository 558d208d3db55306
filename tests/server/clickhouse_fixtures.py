"""A real ClickHouse engine for the tests: one local server process per test session
(``engine.server.clickhouse.local_server``: chDB behind ClickHouse's HTTP interface), and
a fresh database per test, so tests share the server and never each other's rows."""

import uuid

import pytest

from engine.server.clickhouse._process import local_clickhouse

PASSWORD = "test-password"


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory):
    with local_clickhouse(tmp_path_factory.mktemp("clickhouse"), PASSWORD) as server:
        yield server


@pytest.fixture
def clickhouse_url(clickhouse_server, monkeypatch):
    """A store URL on a database of its own; the password is in the environment."""
    monkeypatch.setenv("ENGINE_CLICKHOUSE_PASSWORD", PASSWORD)
    return clickhouse_server.store_url(f"t_{uuid.uuid4().hex[:12]}")
