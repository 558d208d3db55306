import functools

import pytest

from tests.server.harness import LOOP_NAMES, run_on


@pytest.fixture(params=LOOP_NAMES)
def run(request):
    """``run(coro)`` on a fresh asyncio or uvloop loop (each test runs on both)."""
    return functools.partial(run_on, request.param)


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "traces.db"
