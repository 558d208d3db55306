"""Log lines on stderr, the same in every engine process.

The command's ``--log-format`` / ``--log-level`` are exported as ``ENGINE_LOG_FORMAT`` /
``ENGINE_LOG_LEVEL`` so the sender process (a child of the command) writes its lines in the
same format; a user's program sets the variables itself.
"""

from __future__ import annotations

import json
import logging
import os
import sys

from engine.common import _env
from engine.common._errors import ConfigError

FORMATS = ("text", "logfmt", "json")
LEVELS = ("debug", "info", "warning", "error")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


class StructuredFormatter(logging.Formatter):
    """One record per line as logfmt or JSON: time, level, logger, pid, msg, and any ``extra=``
    keys. Values of keys that look secret (``*key*``, ``authorization``, ``token``) never leave."""

    _RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def __init__(self, style: str) -> None:
        super().__init__()
        self._style = style

    def format(self, record: logging.LogRecord) -> str:
        fields = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
                  "logger": record.name, "pid": record.process, "msg": record.getMessage()}
        fields.update({k: v for k, v in vars(record).items() if k not in self._RESERVED})
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        fields = {k: ("***" if _is_secret(k) else v) for k, v in fields.items()}
        if self._style == "json":
            return json.dumps(fields, default=str)
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in fields.items())


def _is_secret(key: str) -> bool:
    lowered = key.lower()
    return "key" in lowered or "authorization" in lowered or "token" in lowered


def _logfmt_value(value: object) -> str:
    text = str(value)
    if text and not any(c in text for c in ' ="\n'):
        return text
    return json.dumps(text)


def check_env(environ: dict[str, str] | os._Environ = os.environ) -> None:
    """``ENGINE_LOG_LEVEL`` / ``ENGINE_LOG_FORMAT`` hold a value these lines know, or
    ConfigError names the variable and the values it takes (the ``engine`` command refuses
    a typo at once; the sender process would otherwise fail on it, restarted again and
    again)."""
    for name, allowed in ((_env.LOG_LEVEL, LEVELS), (_env.LOG_FORMAT, FORMATS)):
        value = environ.get(name, "").strip().lower()
        if value and value not in allowed:
            raise ConfigError("environment", f"{name}={environ[name]!r} is not one of "
                              f"{', '.join(allowed)} (fix or unset it)")


def level_from_env(default: str = "WARNING") -> str:
    """``ENGINE_LOG_LEVEL``, else ``default`` -- also for a value these lines do not know:
    the sender process must start whatever its owner's environment holds (the ``engine``
    command and ``Engine()`` refuse a typo first: :func:`check_env`)."""
    level = os.environ.get(_env.LOG_LEVEL, "").strip().lower()
    return level.upper() if level in LEVELS else default


def setup(log_format: str | None = None, level: str | None = None) -> None:
    """One stderr handler on the root logger, in ``log_format`` (default: ``ENGINE_LOG_FORMAT``,
    else text) at ``level`` (default: ``ENGINE_LOG_LEVEL``, else WARNING)."""
    style = (log_format or os.environ.get(_env.LOG_FORMAT) or "text").strip().lower()
    handler = logging.StreamHandler(sys.stderr)
    if style in ("logfmt", "json"):
        handler.setFormatter(StructuredFormatter(style))
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or level_from_env()).upper())
