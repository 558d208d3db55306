"""URLs without their secrets, for logs, errors, stats and command lines.

A URL may carry credentials as userinfo (``https://api:KEY@host``) or in its query
(``?api_key=KEY``, ``token=``, ``password=``…). Whatever the engine prints, logs, reports
or passes on a command line goes through :func:`redact_url`; the real URL travels only in
memory, the environment of a child, or a 0600 file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import yarl

REDACTED = "***"
_SECRET_WORDS = ("key", "token", "secret", "password", "passwd", "auth", "credential", "signature")


def _secret_param(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def has_credentials(url: str) -> bool:
    parsed = _parse(url)
    if parsed is None:
        return False
    return bool(parsed.user or parsed.password or any(map(_secret_param, parsed.query)))


def redact_url(url: str) -> str:
    """``url`` with userinfo and secret-looking query values replaced by ``***``."""
    if not has_credentials(url):
        return url if _parse(url) is not None or "@" not in url else REDACTED
    parsed = _parse(url)
    assert parsed is not None
    if parsed.user or parsed.password:
        parsed = parsed.with_user(REDACTED).with_password(None)
    if any(map(_secret_param, parsed.query)):
        parsed = parsed.with_query([(k, REDACTED if _secret_param(k) else v)
                                    for k, v in parsed.query.items()])  # fmt: skip
    return str(parsed)


def _parse(url: str) -> yarl.URL | None:
    import yarl  # when a URL is first redacted: a process that never prints one skips it

    try:
        return yarl.URL(url)
    except (ValueError, TypeError):
        return None
