"""HTTPS, proxies and custom CAs on every outbound connection (engine.common._http), against
``engine serve --tls-cert/--tls-key`` on loopback with a test CA (trustme) and a real
forward proxy (tests.forward_proxy) that alone resolves ``engine-test.invalid``: a delivery
to that name proves the proxy carried it."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

import engine
from engine.server import serve_subprocess
from engine.server._subprocess import spawn_listening, stop_server
from engine.wire import uuid7
from tests.engine.helpers import make_engine, trace_calls
from tests.forward_proxy import ForwardProxy

NAME = "engine-test.invalid"  # resolves only inside the test proxy
# engine serve answers a name other than loopback's only with keys (its DNS-rebinding guard);
# weave's programs here send the key tests.integrations.test_weave_integration gives them
API_KEY = "0123456789abcdef0123456789abcdef01234567"
N_ROOTS = 20  # each with a child: 40 calls
NET_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR", "WEAVE_INSECURE_DISABLE_SSL", "HTTP_PROXY",
                 "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy",
                 "all_proxy", "no_proxy")


class Pki:
    def __init__(self, folder: Path) -> None:
        ca = trustme.CA()
        issued = ca.issue_cert("127.0.0.1", "localhost", NAME)
        self.ca, self.cert, self.key = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
        ca.cert_pem.write_to_path(str(self.ca))
        issued.cert_chain_pems[0].write_to_path(str(self.cert))
        for pem in issued.cert_chain_pems[1:]:
            pem.write_to_path(str(self.cert), append=True)
        issued.private_key_pem.write_to_path(str(self.key))
        self.key.chmod(0o600)

    @property
    def flags(self) -> tuple[str, ...]:
        return ("--tls-cert", str(self.cert), "--tls-key", str(self.key))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_url(pki, tmp_path_factory):
    with serve_subprocess(tmp_path_factory.mktemp("tls") / "t.db", api_key=API_KEY,
                          flags=pki.flags) as url:
        yield url


@pytest.fixture(autouse=True)
def clean_net_env(monkeypatch):
    """The machine's own proxy and CA variables stay out of these tests."""
    for name in NET_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _stored(url: str, project: str, ca: Path) -> int:
    env_before = os.environ.get("SSL_CERT_FILE")
    os.environ["SSL_CERT_FILE"] = str(ca)
    try:
        with engine.RemoteHTTPTraceServer(url, api_key=API_KEY) as client:
            return client.calls_query_stats({"project_id": project}).count
    finally:
        if env_before is None:
            os.environ.pop("SSL_CERT_FILE")
        else:
            os.environ["SSL_CERT_FILE"] = env_before


def _deliver(url: str, tmp_path: Path, project: str, **overrides) -> tuple[bool, dict]:
    overrides.setdefault("api_key", API_KEY)
    with make_engine(url, tmp_path, project=project, **overrides) as eng:
        trace_calls(eng.producer(), N_ROOTS)
        flushed = eng.flush(timeout_s=20)
        return flushed, eng.stats()


def test_engine_delivers_to_https_serve_with_the_ca_in_ssl_cert_file(
        pki, tls_url, tmp_path, monkeypatch):
    assert tls_url.startswith("https://127.0.0.1:")
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
    flushed, stats = _deliver(tls_url, tmp_path, "tls/ca-given")
    assert flushed and stats["items_acked"] == 2 * N_ROOTS
    assert _stored(tls_url, "tls/ca-given", pki.ca) == 2 * N_ROOTS


def test_without_the_ca_one_clear_line_items_spooled_and_replay_delivers_them(
        pki, tls_url, tmp_path, monkeypatch, capfd):
    spool = tmp_path / "spool"
    flushed, stats = _deliver(tls_url, tmp_path, "tls/ca-missing", spool_dir=str(spool),
                              delivery_deadline_s=1.0, shutdown_timeout_s=3.0)
    assert not flushed
    assert (stats["items_acked"], stats["spooled_items"]) == (0, 2 * N_ROOTS)
    err = capfd.readouterr().err
    host = f"127.0.0.1:{_port(tls_url)}"
    lines = [line for line in err.splitlines() if f"TLS certificate of {host} not trusted" in line]
    assert lines, err
    assert "certifi's bundle" in lines[0] and "SSL_CERT_FILE" in lines[0], lines[0]
    assert "Traceback" not in err
    assert _stored(tls_url, "tls/ca-missing", pki.ca) == 0

    replay = subprocess.run(
        [sys.executable, "-m", "engine", "replay", "--spool", str(spool), "--to", tls_url],
        env={**os.environ, "SSL_CERT_FILE": str(pki.ca), "ENGINE_API_KEY": API_KEY},
        capture_output=True, text=True,
        timeout=60)
    assert replay.returncode == 0, replay.stderr
    assert _stored(tls_url, "tls/ca-missing", pki.ca) == 2 * N_ROOTS


def test_insecure_switch_delivers_without_the_ca_and_says_so_once(
        tls_url, pki, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("WEAVE_INSECURE_DISABLE_SSL", "true")
    flushed, _ = _deliver(tls_url, tmp_path, "tls/insecure")
    assert flushed
    err = capfd.readouterr().err
    assert err.count("WEAVE_INSECURE_DISABLE_SSL=true: TLS certificates are not verified") == 1
    assert _stored(tls_url, "tls/insecure", pki.ca) == 2 * N_ROOTS


def test_https_goes_through_the_proxy_by_connect_and_the_key_never_shows(
        pki, tls_url, tmp_path, monkeypatch, capfd):
    target = f"https://{NAME}:{_port(tls_url)}"
    with ForwardProxy({NAME: "127.0.0.1"}, credentials="proxyuser:proxy-secret") as proxy:
        host_port = proxy.url.split("://")[1]
        monkeypatch.setenv("HTTPS_PROXY", f"http://proxyuser:proxy-secret@{host_port}")
        monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
        flushed, _ = _deliver(target, tmp_path, "tls/proxied")
    assert flushed
    assert _stored(tls_url, "tls/proxied", pki.ca) == 2 * N_ROOTS
    assert set(proxy.methods) == {"CONNECT"}
    assert {target for _, target, _ in proxy.heads} == {f"{NAME}:{_port(tls_url)}"}
    assert all("Proxy-Authorization" in headers for _, _, headers in proxy.heads)
    in_clear = bytes(proxy.client_bytes)
    assert b"Authorization: Basic" not in in_clear.replace(b"Proxy-Authorization", b"")
    assert base64.b64encode(f"api:{API_KEY}".encode()) not in in_clear
    assert API_KEY.encode() not in in_clear
    assert "proxy-secret" not in capfd.readouterr().err


def test_no_proxy_naming_the_host_goes_direct_and_says_the_name_is_unknown(
        pki, tls_url, tmp_path, monkeypatch, capfd):
    with ForwardProxy({NAME: "127.0.0.1"}) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", f"localhost,{NAME}")
        flushed, stats = _deliver(f"https://{NAME}:{_port(tls_url)}", tmp_path, "tls/no-proxy",
                                  delivery_deadline_s=1.0, shutdown_timeout_s=3.0)
    assert not flushed and proxy.heads == []
    assert stats["items_acked"] == 0
    assert stats["dead_letters"] + stats.get("spooled_items", 0) == 2 * N_ROOTS
    err = capfd.readouterr().err
    assert f"unknown host {NAME}" in err and "direct (NO_PROXY names" in err, err
    assert "Traceback" not in err


def test_a_loopback_target_never_goes_through_the_proxy(pki, tls_url, tmp_path, monkeypatch):
    with ForwardProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
        flushed, _ = _deliver(tls_url, tmp_path, "tls/loopback")
    assert flushed and proxy.heads == []
    assert _stored(tls_url, "tls/loopback", pki.ca) == 2 * N_ROOTS


def test_read_clients_go_through_the_proxy_http_by_absolute_uri_https_by_connect(
        pki, tls_url, tmp_path, monkeypatch):
    with serve_subprocess(tmp_path / "plain.db", api_key=API_KEY) as plain_url, \
            ForwardProxy({NAME: "127.0.0.1"}) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
        with engine.RemoteHTTPTraceServer(f"http://{NAME}:{_port(plain_url)}",
                                          api_key=API_KEY) as client:
            assert client.calls_query_stats({"project_id": "tls/none"}).count == 0
        absolute = [(m, t, h) for m, t, h in proxy.heads if m != "CONNECT"]
        assert absolute and absolute[0][1].startswith(f"http://{NAME}:{_port(plain_url)}/")

        async def read_async() -> int:
            async with engine.AsyncRemoteHTTPTraceServer(
                    f"https://{NAME}:{_port(tls_url)}", api_key=API_KEY) as client:
                return (await client.calls_query_stats({"project_id": "tls/none"})).count

        assert asyncio.run(read_async()) == 0
        with engine.RemoteHTTPTraceServer(f"https://{NAME}:{_port(tls_url)}",
                                          api_key=API_KEY) as client:
            assert client.calls_query_stats({"project_id": "tls/none"}).count == 0
    assert proxy.methods.count("CONNECT") >= 2
    tunnelled = bytes(proxy.client_bytes).split(b"CONNECT", 1)[1]
    assert base64.b64encode(f"api:{API_KEY}".encode()) not in tunnelled


def test_relay_serves_tls_and_reaches_its_upstream_through_the_proxy(
        pki, tls_url, tmp_path, monkeypatch):
    upstream = f"https://{NAME}:{_port(tls_url)}"
    with ForwardProxy({NAME: "127.0.0.1"}) as proxy:
        env = {**os.environ, "HTTPS_PROXY": proxy.url, "SSL_CERT_FILE": str(pki.ca),
               "ENGINE_DEAD_LETTER_PATH": str(tmp_path / "dl.jsonl"), "ENGINE_API_KEY": API_KEY}
        proc, relay_url = spawn_listening(
            [sys.executable, "-m", "engine", "relay", "--listen", "127.0.0.1:0",
             "--upstream", upstream, *pki.flags], env=env)
        try:
            assert relay_url.startswith("https://127.0.0.1:")
            monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
            with engine.RemoteHTTPTraceServer(relay_url, api_key=API_KEY) as client:
                for _ in range(5):
                    call_id, trace_id = str(uuid7()), str(uuid7())
                    client.call_start({"start": {
                        "project_id": "tls/relay", "id": call_id, "trace_id": trace_id,
                        "op_name": "relayed", "started_at": "2026-01-01T00:00:00Z",
                        "attributes": {}, "inputs": {}}})
                    client.call_end({"end": {
                        "project_id": "tls/relay", "id": call_id,
                        "ended_at": "2026-01-01T00:00:01Z", "summary": {}}})
                # a read is proxied upstream by the relay's own session
                assert client.calls_query_stats({"project_id": "tls/relay"}).count >= 0
        finally:
            assert stop_server(proc) == 0
    assert _stored(tls_url, "tls/relay", pki.ca) == 5
    assert set(proxy.methods) == {"CONNECT"} and len(proxy.heads) >= 2


def test_doctor_names_the_proxy_masked_and_the_ca_source_and_reaches_through_them(
        pki, tls_url):
    target = f"https://{NAME}:{_port(tls_url)}"
    with ForwardProxy({NAME: "127.0.0.1"}, credentials="proxyuser:proxy-secret") as proxy:
        proxy_url = proxy.url.replace("://", "://proxyuser:proxy-secret@")
        env = {**os.environ, "HTTPS_PROXY": proxy_url, "SSL_CERT_FILE": str(pki.ca),
               "ENGINE_API_KEY": API_KEY}
        result = subprocess.run([sys.executable, "-m", "engine", "doctor", target,
                                 "--limit-mib", "1"], env=env, capture_output=True, text=True,
                                timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    masked = proxy.url.replace("://", "://***@")
    assert (f"ok   network: proxy: {masked} (from HTTPS_PROXY); CAs: SSL_CERT_FILE={pki.ca}"
            in result.stdout), result.stdout
    assert "proxy-secret" not in result.stdout + result.stderr
    assert set(proxy.methods) == {"CONNECT"}


_WEAVE_PROGRAM = """
import sys, weave
client = weave.init(sys.argv[1])

@weave.op
def answer(i: int) -> int:
    return i * 2

for i in range(3):
    answer(i)
client.flush()
print("done")
"""


def test_weave_client_talks_to_tls_serve_with_the_ca_in_ssl_cert_file(pki, tls_url, tmp_path):
    from tests.integrations.test_weave_integration import _run_program, _weave_env

    program = tmp_path / "weave_program.py"
    program.write_text(_WEAVE_PROGRAM)
    env = {**_weave_env(tls_url, str(tmp_path), enable_env=False),
           "SSL_CERT_FILE": str(pki.ca)}
    result = _run_program([sys.executable, str(program), "tls/weave"], env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _stored(tls_url, "tls/weave", pki.ca) == 3
