"""``from_env``: WF_TRACE_SERVER_URL / WANDB_BASE_URL, and WANDB_API_KEY or the netrc key."""

from __future__ import annotations

import base64

import pytest
from aiohttp import web

from engine.client import RemoteHTTPTraceServer
from engine.client._env import settings_from_env
from tests.client.stub import StubServer


@pytest.mark.parametrize(("env", "trace_url", "base_url"), [
    ({}, "https://trace.wandb.ai", "https://api.wandb.ai"),
    ({"WANDB_BASE_URL": "https://wandb.example.com/"}, "https://wandb.example.com/traces",
     "https://wandb.example.com"),
    ({"WANDB_BASE_URL": "https://wandb.example.com", "WF_TRACE_SERVER_URL": "http://127.0.0.1:7"},
     "http://127.0.0.1:7", "https://wandb.example.com"),
])
def test_urls_follow_wire_section_1(env, trace_url, base_url, tmp_path):
    settings = settings_from_env({"NETRC": str(tmp_path / "none"), **env})
    assert (settings.trace_server_url, settings.wandb_base_url) == (trace_url, base_url)
    assert settings.api_key is None


def test_api_key_from_env_wins_over_netrc(tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai login user password from-netrc\n")
    netrc.chmod(0o600)
    assert settings_from_env({"NETRC": str(netrc)}).api_key == "from-netrc"
    env = {"NETRC": str(netrc), "WANDB_API_KEY": "from-env"}
    assert settings_from_env(env).api_key == "from-env"
    assert "from-env" not in repr(settings_from_env(env))


def test_netrc_entry_is_the_one_for_the_base_host(tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai login u password hosted\n"
                     "machine wandb.example.com login u password local\n")
    netrc.chmod(0o600)
    env = {"NETRC": str(netrc), "WANDB_BASE_URL": "https://wandb.example.com"}
    assert settings_from_env(env).api_key == "local"


def test_from_env_client_talks_to_the_env_url_with_the_env_key(monkeypatch, tmp_path):
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"count": 1})

    with StubServer(handler) as stub:
        monkeypatch.setenv("WF_TRACE_SERVER_URL", stub.url)
        monkeypatch.setenv("WANDB_API_KEY", "k1")
        monkeypatch.setenv("NETRC", str(tmp_path / "none"))
        with RemoteHTTPTraceServer.from_env() as client:
            assert client.calls_query_stats({"project_id": "a/b"}).count == 1
        auth = stub.requests[0].headers["Authorization"]
    assert auth == "Basic " + base64.b64encode(b"api:k1").decode()
