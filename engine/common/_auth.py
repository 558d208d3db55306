"""How every HTTP client of the project sends an API key (WIRE.md §1)."""

from __future__ import annotations

import base64


def basic_auth(api_key: str) -> str:
    """The ``Authorization`` value: HTTP Basic with user ``api`` and the key (never logged)."""
    return "Basic " + base64.b64encode(f"api:{api_key}".encode()).decode("ascii")
