"""How every HTTP client of the project sends an API key (WIRE.md §1)."""

from __future__ import annotations

import base64


def basic_auth(api_key: str) -> str:
    """The ``Authorization`` value: HTTP Basic with user ``api`` and the key (never logged)."""
    return "Basic " + base64.b64encode(f"api:{api_key}".encode()).decode("ascii")


def url_credentials(url: str) -> tuple[str, str | None]:
    """``url`` without its userinfo, and the ``Authorization`` value that userinfo means
    (``https://api:KEY@host`` → ``basic_auth(KEY)``; None without one).

    Every client sends the URL's credentials in this header, as aiohttp would from the URL
    itself, and in place of a key from elsewhere: the URL names them for that server, and
    aiohttp refuses a request with both."""
    import yarl  # where a URL is first sent: a process that never sends one skips it

    parsed = yarl.URL(url)
    if parsed.user is None and parsed.password is None:
        return url, None
    token = f"{parsed.user or ''}:{parsed.password or ''}"
    return str(parsed.with_user(None)), "Basic " + base64.b64encode(token.encode()).decode("ascii")


def key_refused(base_url: str, status: int, *, in_url: bool, has_key: bool, key_from: str) -> str:
    """What to say when ``base_url`` (shown without credentials) answers 401/403 to a
    client's first request: which key it refused, by where it came from (never the key),
    and what to do. ``key_from``: ``api_key_source``'s words (engine.common._config)."""
    if in_url:
        return f"{base_url} refused the key in the URL (HTTP {status}): put one it accepts there"
    if has_key:
        return (f"{base_url} refused the API key from {key_from} (HTTP {status}): put a key it "
                "accepts there")
    return f"{base_url} needs an API key (HTTP {status}): set {key_from} to a key it accepts"
