import functools

import pytest

# ClickHouse's fixtures are registered here, once: a fixture imported into each test module
# is a fixture of that module, and each module started (and kept until the session's end)
# a ClickHouse server of its own
from tests.server.clickhouse_fixtures import clickhouse_server, clickhouse_url  # noqa: F401
from tests.server.harness import LOOP_NAMES, run_on


@pytest.fixture(params=LOOP_NAMES)
def run(request):
    """``run(coro)`` on a fresh asyncio or uvloop loop (each test runs on both)."""
    return functools.partial(run_on, request.param)


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "traces.db"
