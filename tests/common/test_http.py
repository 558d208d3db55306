"""The proxy and CA rules of every outbound connection (engine.common._http): weave's
client's (httpx's) rules, but a loopback target never proxied."""

import pytest

from engine.common._errors import ConfigError
from engine.common._http import ca_source, choose_proxy, ssl_context

PROXY = "http://proxy.corp:3128"


@pytest.mark.parametrize(("url", "env", "expected"), [
    ("https://trace.wandb.ai", {"HTTPS_PROXY": PROXY}, PROXY),
    ("https://trace.wandb.ai", {"https_proxy": PROXY, "HTTPS_PROXY": "http://other:1"}, PROXY),
    ("https://trace.wandb.ai", {"HTTP_PROXY": PROXY}, None),  # http_proxy is for http URLs
    ("http://trace.corp", {"HTTP_PROXY": PROXY}, PROXY),
    ("https://trace.wandb.ai", {"ALL_PROXY": PROXY}, PROXY),
    ("https://trace.wandb.ai", {"HTTPS_PROXY": "proxy.corp:3128"}, PROXY),  # scheme added
    ("http://trace.corp", {"HTTP_PROXY": PROXY, "REQUEST_METHOD": "GET"}, None),  # CGI
    ("http://127.0.0.1:6345", {"HTTP_PROXY": PROXY}, None),
    ("http://127.8.0.1:6345", {"ALL_PROXY": PROXY}, None),
    ("http://[::1]:6345", {"HTTP_PROXY": PROXY}, None),
    ("https://localhost:6345", {"HTTPS_PROXY": PROXY}, None),
    ("https://a.wandb.ai", {"HTTPS_PROXY": PROXY, "NO_PROXY": "wandb.ai"}, None),
    ("https://wandb.ai", {"HTTPS_PROXY": PROXY, "NO_PROXY": "wandb.ai"}, None),
    ("https://notwandb.ai", {"HTTPS_PROXY": PROXY, "NO_PROXY": "wandb.ai"}, PROXY),
    ("https://wandb.ai", {"HTTPS_PROXY": PROXY, "NO_PROXY": ".wandb.ai"}, PROXY),
    ("https://a.wandb.ai", {"HTTPS_PROXY": PROXY, "no_proxy": ".wandb.ai"}, None),
    ("https://a.b", {"HTTPS_PROXY": PROXY, "NO_PROXY": " x , *"}, None),
    ("https://10.1.2.3", {"HTTPS_PROXY": PROXY, "NO_PROXY": "10.0.0.0/8"}, None),
    ("https://11.1.2.3", {"HTTPS_PROXY": PROXY, "NO_PROXY": "10.0.0.0/8"}, PROXY),
    ("https://h.corp:8443", {"HTTPS_PROXY": PROXY, "NO_PROXY": "h.corp:8443"}, None),
    ("https://h.corp", {"HTTPS_PROXY": PROXY, "NO_PROXY": "h.corp:8443"}, PROXY),
    ("https://h.corp", {"HTTPS_PROXY": PROXY, "NO_PROXY": "http://h.corp"}, PROXY),
    ("http://h.corp", {"HTTP_PROXY": PROXY, "NO_PROXY": "http://h.corp"}, None),
])  # fmt: skip
def test_proxy_choice_follows_weaves_client_but_never_proxies_loopback(url, env, expected):
    assert choose_proxy(url, env).url == expected


def test_proxy_credentials_are_kept_for_the_proxy_and_masked_when_shown():
    choice = choose_proxy("https://trace.wandb.ai", {"HTTPS_PROXY": "http://u:s3cret@p:3128"})
    assert choice.url == "http://u:s3cret@p:3128"
    assert "s3cret" not in choice.shown and "from HTTPS_PROXY" in choice.shown


def test_a_proxy_that_is_not_http_is_a_config_error_naming_the_variable():
    with pytest.raises(ConfigError, match=r"^https_proxy: socks5://p:1080 is not an http://"):
        choose_proxy("https://trace.wandb.ai", {"https_proxy": "socks5://p:1080"})


def test_ca_source_is_certifi_unless_the_variables_say_otherwise():
    assert ca_source({}).startswith("certifi's bundle (")
    assert ca_source({"SSL_CERT_FILE": "/x.pem"}) == "SSL_CERT_FILE=/x.pem"
    assert ca_source({"SSL_CERT_DIR": "/certs"}) == "SSL_CERT_DIR=/certs"
    assert ca_source({"WEAVE_INSECURE_DISABLE_SSL": "TRUE"}).startswith("none: ")


def test_a_ca_file_that_cannot_be_read_is_one_config_error(monkeypatch, tmp_path):
    monkeypatch.delenv("WEAVE_INSECURE_DISABLE_SSL", raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match=r"^SSL_CERT_FILE: cannot load CA certificates from "):
        ssl_context()


@pytest.mark.parametrize(("variable", "value", "said"), [
    ("HTTPS_PROXY", "socks5://proxy.corp:1080", r"^HTTPS_PROXY: socks5://proxy.corp:1080 is not "),
    ("SSL_CERT_FILE", "/nonexistent/ca.pem", r"^SSL_CERT_FILE: cannot load CA certificates "),
    ("SSL_CERT_DIR", "/nonexistent", r"^SSL_CERT_DIR: /nonexistent is not a folder "),
])  # fmt: skip
def test_engine_says_what_its_sender_could_not_connect_with_before_it_starts(
        monkeypatch, tmp_path, variable, value, said):
    """The sender would fail at its start (its transport takes the proxy and the CAs), far
    from the program: Engine() raises, before a ring exists."""
    import engine

    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "HTTPS_PROXY", "https_proxy", "ALL_PROXY",
                 "all_proxy", "WEAVE_INSECURE_DISABLE_SSL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=said):
        engine.Engine("https://trace.example.com", project="e/p",
                      dead_letter_path=str(tmp_path / "dl.jsonl"))
