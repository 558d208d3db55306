"""Content digests, computed exactly as weave 0.54.0 computes them client-side.

weave (``weave/trace/serialization/digest.py``) hashes ``json.dumps(val, sort_keys=True)``
for objects and table rows, the raw bytes for files, and the concatenated row digests for
a table. Matching it byte for byte lets a weave client that sends ``expected_digest`` find
its own digest accepted, and keeps refs stable across servers.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from typing import Any


def bytes_digest(data: bytes) -> str:
    """urlsafe base64 of SHA-256, ``-``→``X``, ``_``→``Y``, unpadded (weave's alphabet)."""
    encoded = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
    return encoded.replace("-", "X").replace("_", "Y").rstrip("=")


def canonical_json(val: Any) -> str:
    # Python's own json, not msgspec: weave's digest depends on its exact separators and
    # ASCII escaping
    return json.dumps(val, sort_keys=True)


def value_digest(val: Any) -> str:
    """The digest of an object value or of one table row."""
    return bytes_digest(canonical_json(val).encode())


def table_digest(row_digests: Iterable[str]) -> str:
    """A table's digest: hex SHA-256 over its row digests in order."""
    hasher = hashlib.sha256()
    for row_digest in row_digests:
        hasher.update(row_digest.encode())
    return hasher.hexdigest()
