"""How every outbound connection of the engine reaches a server: which proxy, which CAs.

One place for the sender's transport, the read clients (``RemoteHTTPTraceServer``, its
async twin), the relay's upstream session and the commands' probes, so that a user whose
weave client works behind a corporate proxy, with a private CA or without system
certificates keeps working with the engine. The rules are weave 0.54.0's client's (httpx's
defaults), with one difference:

- Proxies: ``https_proxy`` / ``http_proxy`` for URLs of that scheme, else ``all_proxy``
  (lower case wins over upper case, as in :func:`urllib.request.getproxies`); ``no_proxy``
  names hosts reached directly: ``*`` (every host), ``example.com`` (it and its subdomains),
  ``.example.com`` (its subdomains only), ``host:port``, IP addresses, CIDR ranges
  (``10.0.0.0/8``) and ``scheme://host`` entries. A proxy URL without a scheme is
  ``http://``; credentials in it (``http://user:pass@proxy:3128``) are sent to the proxy
  only, as ``Proxy-Authorization``, and never logged. Only http:// proxies are supported.
- The difference: a loopback target (``localhost``, 127.0.0.0/8, ``::1``) is never proxied.
  httpx would proxy it unless ``no_proxy`` says otherwise; the engine's own local server must
  keep working for a user who sets ``HTTP_PROXY`` without ``NO_PROXY``.
- CAs: the files ``SSL_CERT_FILE`` or the folder ``SSL_CERT_DIR`` name, else certifi's bundle
  (not the system store, which a Mac's python.org Python lacks); with
  ``WEAVE_INSECURE_DISABLE_SSL=true`` certificates are not verified, and the process says so
  once.
- ``~/.netrc`` is never read: no credential from it is added to a request or sent to a proxy
  (aiohttp's ``trust_env`` would; sessions are built with it off and the proxy given here).

Proxy choice is made once per session (or per host, for the read clients), never per request.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import urlsplit

from engine.common._errors import ConfigError
from engine.common._redact import redact_url

if TYPE_CHECKING:  # ssl and ipaddress are imported where used: Engine() checks the
    import ssl  # variables in the owner, which need not pay ~12 ms of imports for them
    import urllib.request

log = logging.getLogger("engine")

INSECURE_VARIABLE = "WEAVE_INSECURE_DISABLE_SSL"
CA_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR")
PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")
CA_HINT = "set SSL_CERT_FILE or SSL_CERT_DIR to the CA that signed it"
PROXY_HINT = "check HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY"


class ProxyChoice(NamedTuple):
    """The proxy a URL goes through (None: direct), and why, for doctor and error lines."""

    url: str | None
    why: str

    @property
    def shown(self) -> str:
        """The proxy without its credentials (or ``direct``), with why."""
        return f"{redact_url(self.url)} ({self.why})" if self.url else f"direct ({self.why})"


def is_loopback(host: str) -> bool:
    import ipaddress

    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def choose_proxy(url: str, environ: Mapping[str, str] | None = None) -> ProxyChoice:
    """The proxy for ``url`` by the environment's variables (see the module's doc).
    A proxy that is not an http:// URL raises ConfigError, naming the variable."""
    env = os.environ if environ is None else environ
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    port = parts.port or (443 if scheme == "https" else 80)
    found = _variable(env, f"{scheme}_proxy") or _variable(env, "all_proxy")
    if found is None:
        return ProxyChoice(None, "no proxy variable set")
    if is_loopback(host):
        return ProxyChoice(None, "a loopback address is never proxied")
    name, value = found
    no_proxy = _variable(env, "no_proxy")
    if no_proxy is not None and _bypassed(no_proxy[1], scheme, host, port):
        return ProxyChoice(None, f"{no_proxy[0]} names {host}")
    return ProxyChoice(_proxy_url(name, value), f"from {name}")


def _variable(env: Mapping[str, str], lower: str) -> tuple[str, str] | None:
    """(name, value) of ``lower`` or its upper-case form (lower case first, as urllib reads
    them; ``HTTP_PROXY`` is ignored in a CGI request, where a client can set it)."""
    upper = lower.upper()
    for name in (lower, upper):
        if name == "HTTP_PROXY" and "REQUEST_METHOD" in env:
            continue
        value = env.get(name, "").strip()
        if value:
            return name, value
    return None


def _proxy_url(name: str, value: str) -> str:
    url = value if "://" in value else f"http://{value}"
    parts = urlsplit(url)
    if parts.scheme.lower() != "http" or not parts.hostname:
        raise ConfigError(name, f"{redact_url(url)} is not an http:// proxy URL (the engine "
                                "talks to http:// proxies only: http://[user:pass@]host:port)")
    return url


def _bypassed(no_proxy: str, scheme: str, host: str, port: int) -> bool:
    return any(_entry_matches(entry.strip().lower(), scheme, host, port)
               for entry in no_proxy.split(",") if entry.strip())


def _entry_matches(entry: str, scheme: str, host: str, port: int) -> bool:
    import ipaddress

    if entry == "*":
        return True
    if "://" in entry:
        parts = urlsplit(entry)
        if parts.scheme not in ("all", scheme):
            return False
        entry = parts.netloc
    try:
        network = ipaddress.ip_network(entry.strip("[]"), strict=False)
    except ValueError:
        network = None
    if network is not None:
        try:
            return ipaddress.ip_address(host.strip("[]")) in network
        except ValueError:
            return False
    name, _, entry_port = entry.rpartition(":") if _has_port(entry) else (entry, "", "")
    if entry_port and int(entry_port) != port:
        return False
    if name.startswith("*."):
        name = name[1:]
    if name.startswith("."):
        return host.endswith(name)
    return host == name or host.endswith("." + name)


def _has_port(entry: str) -> bool:
    head, sep, tail = entry.rpartition(":")
    return bool(sep and head and tail.isdigit() and not head.endswith(":"))


def insecure(environ: Mapping[str, str] | None = None) -> bool:
    """``WEAVE_INSECURE_DISABLE_SSL=true``: weave's switch for not verifying certificates."""
    env = os.environ if environ is None else environ
    return env.get(INSECURE_VARIABLE, "").strip().lower() == "true"


def ca_source(environ: Mapping[str, str] | None = None) -> str:
    """Where certificates are checked against, in words (doctor, error lines)."""
    env = os.environ if environ is None else environ
    if insecure(env):
        return f"none: {INSECURE_VARIABLE}=true, certificates are not verified"
    for name in CA_VARIABLES:
        if env.get(name):
            return f"{name}={env[name]}"
    import certifi

    return f"certifi's bundle ({certifi.where()})"


def ssl_context() -> ssl.SSLContext:
    """The client context every https connection uses (built once per process for the same
    variables: loading a bundle costs ~10-30 ms). ConfigError names a CA variable that
    points at nothing readable."""
    env = os.environ
    return _context(env.get("SSL_CERT_FILE") or None, env.get("SSL_CERT_DIR") or None,
                    insecure(env))


@functools.lru_cache(maxsize=4)
def _context(cafile: str | None, capath: str | None, no_verify: bool) -> ssl.SSLContext:
    import ssl

    if no_verify:
        log.warning("%s=true: TLS certificates are not verified on any connection this "
                    "process makes (a man in the middle would go unnoticed)", INSECURE_VARIABLE)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if cafile is not None:
        return _load("SSL_CERT_FILE", cafile, cafile=cafile)
    if capath is not None:
        if not os.path.isdir(capath):
            raise ConfigError("SSL_CERT_DIR", f"{capath} is not a folder of CA certificates")
        return _load("SSL_CERT_DIR", capath, capath=capath)
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


def _load(name: str, value: str, **where: str) -> ssl.SSLContext:
    import ssl

    try:
        return ssl.create_default_context(**where)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(name, f"cannot load CA certificates from {value}: "
                                f"{getattr(exc, 'strerror', None) or exc}") from None


def https_context(url: str) -> ssl.SSLContext | None:
    """:func:`ssl_context` for an https ``url``; None for http (nothing to load)."""
    return ssl_context() if urlsplit(url).scheme.lower() == "https" else None


def check_outbound(url: str) -> None:
    """What the sender would find wrong with ``url``'s proxy and CA variables, raised as
    ConfigError at ``Engine()`` instead of in the sender's start: a proxy that is not an
    http:// URL, CA variables naming nothing loadable. (certifi's own bundle is not loaded
    here: nothing to check, and ~10-30 ms the owner need not pay.)"""
    choose_proxy(url)
    env = os.environ
    if urlsplit(url).scheme.lower() == "https" and any(env.get(n) for n in CA_VARIABLES):
        ssl_context()


def describe_client_error(exc: BaseException, proxy: str = "direct") -> str:
    """One line for an aiohttp request that got no answer; a TLS or proxy failure says what
    to check (``proxy``: :attr:`ProxyChoice.shown`, its credentials masked)."""
    import aiohttp  # the processes that send have it loaded already

    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return (f"TLS certificate of {exc.host}:{exc.port} not trusted "
                f"({_ssl_reason(exc.certificate_error)}; CAs: {ca_source()}): {CA_HINT}")
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return f"TLS handshake with {exc.host}:{exc.port} failed ({_ssl_reason(exc.os_error)})"
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return (f"cannot connect to the proxy {proxy}: "
                f"{exc.os_error.strerror or type(exc.os_error).__name__}; {PROXY_HINT}")
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return f"the proxy {proxy} answered HTTP {exc.status} ({exc.message}); {PROXY_HINT}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"unknown host {exc.host} ({exc.os_error.strerror}; going {proxy})"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or type(exc.os_error).__name__})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server closed the connection without answering"
    return f"{type(exc).__name__}: {exc}"


def describe_os_error(error: BaseException, proxy: ProxyChoice) -> str | None:
    """What a blocking client's connection error (urllib's, http.client's) says of the CAs or
    the proxy, with what to check; None when it is neither (the caller says it its way)."""
    import ssl

    if isinstance(error, ssl.SSLCertVerificationError):
        return (f"TLS certificate not trusted ({error.verify_message}; CAs: {ca_source()}): "
                f"{CA_HINT}")
    if proxy.url and (isinstance(error, ConnectionRefusedError)
                      or "Tunnel connection failed" in str(error)):
        return f"through the proxy {proxy.shown}: {type(error).__name__}: {error}; {PROXY_HINT}"
    return None


def _ssl_reason(error: BaseException) -> str:
    return getattr(error, "verify_message", None) or getattr(error, "reason", None) or str(error)


class Route(NamedTuple):
    """How one (scheme, host, port) is reached: its proxy choice and, for https, its context."""

    proxy: ProxyChoice
    context: ssl.SSLContext | None


class Routes:
    """:class:`Route` per (scheme, host, port), chosen on first use (for the read clients,
    which reach a trace server and its W&B API); the environment as it was then."""

    def __init__(self) -> None:
        self._routes: dict[tuple[str, str, int | None], Route] = {}

    def __call__(self, url: str) -> Route:
        parts = urlsplit(url)
        key = (parts.scheme, parts.hostname or "", parts.port)
        route = self._routes.get(key)
        if route is None:
            route = self._routes[key] = Route(choose_proxy(url), https_context(url))
        return route


def urllib_opener(url: str, proxy: ProxyChoice | None = None) -> urllib.request.OpenerDirector:
    """urllib with the proxy and CAs of every outbound connection, for the commands' probes:
    an empty ProxyHandler keeps urllib from reading the proxy variables its own way (it
    would proxy a loopback address), and urllib reads no ~/.netrc."""
    import urllib.request

    proxy = choose_proxy(url) if proxy is None else proxy
    scheme = urlsplit(url).scheme.lower()
    handlers: list[urllib.request.BaseHandler] = [
        urllib.request.ProxyHandler({scheme: proxy.url} if proxy.url else {})]
    if scheme == "https":
        handlers.append(urllib.request.HTTPSHandler(context=ssl_context()))
    return urllib.request.build_opener(*handlers)
