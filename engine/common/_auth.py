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
