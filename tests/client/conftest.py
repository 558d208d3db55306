import uuid

import pytest

from engine.client import RemoteHTTPTraceServer
from engine.server import serve_subprocess


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    """One real ``engine serve`` subprocess per test module (always stopped)."""
    with serve_subprocess(tmp_path_factory.mktemp("serve") / "traces.db") as url:
        yield url


@pytest.fixture
def project():
    """A fresh project per test, so tests sharing a server never see each other's data."""
    return f"client/p{uuid.uuid4().hex[:12]}"


@pytest.fixture
def client(server_url):
    server = RemoteHTTPTraceServer(server_url)
    yield server
    server.close()
