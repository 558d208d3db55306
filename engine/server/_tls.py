"""HTTPS for ``engine serve`` and ``engine relay``: the server's certificate and key.

The key is a secret file, held to the project's rule for those (the keys file's, the
ClickHouse password file's): readable by its owner only (mode 0600), else refused at start.
Every problem with the pair is one :class:`ConfigError` naming the file and what to do.
"""

from __future__ import annotations

import os
import ssl
import stat
from pathlib import Path

from engine.common._errors import ConfigError


def server_context(cert_file: str | Path | None, key_file: str | Path | None
                   ) -> ssl.SSLContext | None:
    """The context serving ``cert_file`` (PEM, the chain after the certificate) with
    ``key_file``; None when neither is given."""
    if cert_file is None and key_file is None:
        return None
    if cert_file is None or key_file is None:
        given, missing = ("tls_cert", "tls_key") if key_file is None else ("tls_key", "tls_cert")
        raise ConfigError(missing, f"--{given.replace('_', '-')} needs "
                                   f"--{missing.replace('_', '-')} too (HTTPS takes both)")
    cert, key = Path(cert_file), Path(key_file)
    _readable("tls_cert", cert)
    _owner_only(key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "KEY_VALUES_MISMATCH" in reason.upper():
            raise ConfigError("tls_key", f"{key} is not the key of the certificate {cert}: "
                                         "give the pair that belongs together") from None
        raise ConfigError("tls_cert", f"cannot load {cert} with {key} ({reason}): both must "
                                      "be PEM, the certificate (then its chain) and its "
                                      "unencrypted private key") from None
    except OSError as exc:
        raise ConfigError("tls_cert", f"cannot read {cert} or {key}: {exc.strerror}") from None
    return context


def _readable(field: str, path: Path) -> os.stat_result:
    try:
        with path.open("rb"):
            return path.stat()
    except OSError as exc:
        raise ConfigError(field, f"cannot read {path}: {exc.strerror}") from None


def _owner_only(key: Path) -> None:
    mode = _readable("tls_key", key).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError("tls_key", f"{key} is readable by others (mode {oct(mode & 0o777)}): "
                                     f"chmod 600 {key}")


def server_url(host: str, port: int, tls: bool = False) -> str:
    """The URL a server bound to ``host``:``port`` answers at."""
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
