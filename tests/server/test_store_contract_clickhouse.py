"""The Store contract (``test_store_contract``) on the ClickHouse store, over HTTP to a
real ClickHouse engine run by the session's local server."""

import pytest

from engine.server.clickhouse import ClickHouseStore, parse_store_url
from tests.server import test_store_contract as contract
from tests.server.harness import run_on

# every contract test, collected again here with the store_run below
globals().update({n: getattr(contract, n) for n in dir(contract) if n.startswith("test_")})


@pytest.fixture
def store_run(clickhouse_url):
    def run(fn):
        async def go():
            store = ClickHouseStore(parse_store_url(clickhouse_url))
            try:
                return await fn(store)
            finally:
                await store.close()

        return run_on("asyncio", go())

    return run
