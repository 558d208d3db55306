"""Typed configuration: argument > ``ENGINE_*`` environment > TOML file > default.

Every field is validated up front; an invalid value raises :class:`ConfigError` naming it.
The TOML file is ``config_file=`` if given, else ``$ENGINE_CONFIG`` if set; its settings live
in the ``[engine]`` table (see ``config/engine.toml`` for every field, documented).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import stat
import sys
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from engine.common import _env
from engine.common._errors import ConfigError
from engine.common._project import EXAMPLE, name_problem
from engine.common._redact import redact_url

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

log = logging.getLogger("engine.config")

ENV_PREFIX = _env.PREFIX
DEFAULT_URL = "http://127.0.0.1:6345"
MAX_REQUEST_BYTES = 32_505_856  # the hosted server's 32 MiB limit minus the client's 1 MiB margin

Target = Literal["auto", "complete", "upsert"]
OnFull = Literal["block", "raise", "drop"]
Compression = Literal["auto", "zstd", "none"]


# on SIGTERM the owner's whole budget (docker stop SIGKILLs 10 s after its SIGTERM)
SIGTERM_TIMEOUT_S = 8.0


class EngineConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every setting of an :class:`engine.Engine`; names carry their units."""

    url: str = DEFAULT_URL
    project: str = ""
    api_key: str | None = None
    # the producer side
    ring_bytes: int = 16 << 20  # one item up to twice this: max_request_bytes fits
    max_slots: int = 1024
    max_block_ms: int = 10_000
    on_full: OnFull = "block"
    strict: bool = False
    # the sender side
    target: Target = "auto"
    max_request_bytes: int = MAX_REQUEST_BYTES
    min_request_bytes: int = 64 << 10
    initial_request_bytes: int = 2 << 20
    linger_ms: int = 20
    eager_start_ms: int = 5_000
    try_upsert_batch: bool = False  # toward a server that does not say it takes them
    max_in_flight: int = 8
    initial_in_flight: int = 2
    max_in_flight_bytes: int = 128 << 20
    compression: Compression = "auto"
    compression_level: int = 1
    compression_threads: int | Literal["auto"] = "auto"
    senders: int | Literal["auto"] = "auto"
    request_timeout_s: float = 60.0
    connect_timeout_s: float = 10.0
    silent_after_s: float = 15.0  # requests in flight, no answer this long: the server fails
    delivery_deadline_s: float = 120.0
    backoff_initial_ms: int = 100
    backoff_max_ms: int = 10_000
    shutdown_timeout_s: float = 30.0
    # on SIGTERM: all the owner has (weave's pending work, delivery, persisting the rest)
    sigterm_timeout_s: float = SIGTERM_TIMEOUT_S
    # "auto": a folder of this user's state per server URL (spool_path); None or "off": none
    spool_dir: str | None = "auto"
    # the most the spool folder holds (0: no bound of its own); beyond it, batches wait in
    # shared memory, where the producers' on_full applies once their rings are full
    spool_max_bytes: int = 0
    # the spool and the dead letters never leave their disk with less than this free
    disk_keep_free_bytes: int = 1 << 30
    dead_letter_path: str | None = None
    start_sender: bool = True

    def __repr__(self) -> str:  # never show the key
        fields = ", ".join(
            f"{f}={'***' if f == 'api_key' and getattr(self, f) else getattr(self, f)!r}"
            for f in self.__struct_fields__
        )
        return f"EngineConfig({fields})"

    __str__ = __repr__


_FIELD_TYPES = {f.name: f.type for f in msgspec.structs.fields(EngineConfig)}
_SECONDS = tuple(name for name in _FIELD_TYPES if name.endswith("_s"))
MAX_RING_BYTES = 4 << 30  # per producer; the segment holds twice this for each slot
MAX_SLOTS = 65_536


def _check_positive(cfg: EngineConfig, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) <= 0:
            raise ConfigError(name, f"must be > 0, got {getattr(cfg, name)!r}")


def validate(cfg: EngineConfig) -> EngineConfig:
    """Cross-field checks the type system cannot express."""
    _check_positive(
        cfg, "ring_bytes", "max_slots", "max_request_bytes", "min_request_bytes",
        "initial_request_bytes", "max_in_flight",
        "initial_in_flight", "max_in_flight_bytes", "request_timeout_s", "connect_timeout_s",
        "silent_after_s", "delivery_deadline_s", "backoff_initial_ms", "backoff_max_ms", "sigterm_timeout_s",
    )
    if cfg.compression_threads != "auto" and cfg.compression_threads <= 0:
        raise ConfigError("compression_threads",
                          f'must be > 0 or "auto", got {cfg.compression_threads!r}')
    if cfg.senders != "auto" and not 1 <= cfg.senders <= min(MAX_SENDERS, cfg.max_slots):
        raise ConfigError("senders", f'must be 1..{min(MAX_SENDERS, cfg.max_slots)} (at most '
                          f'max_slots) or "auto", got {cfg.senders!r}')
    for name in ("max_block_ms", "linger_ms", "eager_start_ms", "shutdown_timeout_s",
                 "spool_max_bytes", "disk_keep_free_bytes"):
        if getattr(cfg, name) < 0:
            raise ConfigError(name, f"must be >= 0, got {getattr(cfg, name)!r}")
    for name in _SECONDS:  # NaN passes every comparison above; inf never ends a wait
        if not math.isfinite(getattr(cfg, name)):
            raise ConfigError(name, f"must be a finite number of seconds, got {getattr(cfg, name)!r}")
    if cfg.ring_bytes < 64 << 10 or cfg.ring_bytes % 4096 or cfg.ring_bytes > MAX_RING_BYTES:
        raise ConfigError("ring_bytes", "must be a multiple of 4096 from 65536 to "
                          f"{MAX_RING_BYTES} (4 GiB), got {cfg.ring_bytes!r}")
    if cfg.max_slots > MAX_SLOTS:
        raise ConfigError("max_slots", f"must be at most {MAX_SLOTS}, got {cfg.max_slots!r}")
    if cfg.backoff_initial_ms > cfg.backoff_max_ms:
        raise ConfigError("backoff_initial_ms", f"must not exceed backoff_max_ms "
                          f"({cfg.backoff_max_ms}), got {cfg.backoff_initial_ms!r}")
    if cfg.min_request_bytes > cfg.max_request_bytes:
        raise ConfigError("min_request_bytes", "must not exceed max_request_bytes")
    if not cfg.min_request_bytes <= cfg.initial_request_bytes:
        raise ConfigError("initial_request_bytes", "must not be below min_request_bytes")
    if cfg.initial_in_flight > cfg.max_in_flight:
        raise ConfigError("initial_in_flight", "must not exceed max_in_flight")
    if not -7 <= cfg.compression_level <= 22:
        raise ConfigError("compression_level", "zstd levels run from -7 to 22")
    url_problem = _url_problem(cfg.url)
    if url_problem:
        raise ConfigError("url", f"{url_problem}, got {redact_url(cfg.url)!r}")
    if cfg.project:
        check_project(cfg.project)
    if cfg.spool_dir is not None and cfg.spool_dir.strip().lower() in _SPOOL_WORDS:
        # "AUTO", " off": the words, not a folder of that name in the working directory
        cfg = msgspec.structs.replace(cfg, spool_dir=_SPOOL_WORDS[cfg.spool_dir.strip().lower()])
    return cfg


def _url_problem(url: str) -> str | None:
    """What keeps ``url`` from being a trace server's base URL (the sender would crash on
    it, restarted again and again), or None."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return "must be an http(s) URL"
    try:
        parts.port  # noqa: B018 - raises on a port out of range or not a number
    except ValueError:
        return "has a port out of range (1-65535) or not a number"
    if not parts.hostname:
        return "names no host"
    return None


def compression_thread_count(cfg: EngineConfig, cpus: int | None = None,
                             senders: int = 1) -> int:
    """Threads a sender compresses on: ``compression_threads``, or for ``"auto"`` half the
    cores (the producers and the server may need the rest) shared by the ``senders``, at
    least one, at most ``max_in_flight`` (each compresses one request's body)."""
    if cfg.compression_threads != "auto":
        return cfg.compression_threads
    cpus = cpus or os.cpu_count() or 1
    return max(1, min(cfg.max_in_flight, cpus // (2 * senders)))


# A sender process moves ~200k eval calls/s on one core (uncompressed; python -m
# bench.sender_drain): one per four cores keeps it from being the bottleneck while the
# producers, which pay ~5 µs per call each, use the rest.
_CORES_PER_SENDER = 4
MAX_SENDERS = 8  # the ring set's sleeping flags (engine.ring: one cache line of them)


def sender_count(cfg: EngineConfig, cpus: int | None = None) -> int:
    """Sender processes for an engine: ``senders``, or for ``"auto"`` one per four cores
    (at least one, at most 8 and ``max_slots``)."""
    if cfg.senders != "auto":
        return cfg.senders
    cpus = cpus or os.cpu_count() or 1
    return max(1, min(MAX_SENDERS, cfg.max_slots, cpus // _CORES_PER_SENDER))


def check_project(project: str, field: str = "project") -> tuple[str, str]:
    """``"entity/project"`` → (entity, project), for a project a server takes writes to
    (:mod:`engine.common._project`): said here, not in dead letters."""
    problem = name_problem(project)
    if problem is not None:
        raise ConfigError(field, f"{project!r} {problem}: {EXAMPLE}")
    entity, _, name = project.partition("/")
    return entity, name


def _env_values(environ: dict[str, str]) -> dict[str, Any]:
    check_environment(environ)
    values: dict[str, Any] = {}
    for name in _FIELD_TYPES:
        raw = environ.get(_env.setting_variable(name))
        if raw is not None:
            values[name] = _parse_env(name, raw)
    return values


_WARNED: set[str] = set()  # unknown variables already warned about in this process


def check_environment(environ: Mapping[str, str] | None = None, *,
                      default: str = "warn") -> None:
    """A misspelt ``ENGINE_*`` variable would silently change nothing: name it and the
    variable probably meant. ``ENGINE_UNKNOWN_ENV`` (else ``default``) says what it does:
    ``warn`` logs once per process and name, ``error`` raises ConfigError. The library
    warns (``ENGINE_`` is a generic prefix: another tool's variable must not stop an eval);
    the ``engine`` command refuses, where an operator reads it at once."""
    environ = os.environ if environ is None else environ
    unknown = _env.unknown_variables(environ, _FIELD_TYPES)
    if not unknown:
        return
    known = _env.known_variables(_FIELD_TYPES)
    mode = environ.get(_env.UNKNOWN_ENV, default).strip().lower()
    if mode == "error":
        name = unknown[0]
        raise ConfigError("environment", f"{name} is not a variable engine reads"
                          f"{_env.did_you_mean(name, known)} (unset it, or set "
                          f"{_env.UNKNOWN_ENV}=warn to only warn)")
    for name in unknown:
        if name not in _WARNED:
            _WARNED.add(name)
            log.warning("%s is not a variable engine reads%s (set %s=error to refuse it)",
                        name, _env.did_you_mean(name, known), _env.UNKNOWN_ENV)


def _parse_env(name: str, raw: str) -> Any:
    """Env values are text; decode them as the field's type (numbers, bools, null)."""
    if _FIELD_TYPES[name] in (str, str | None) or "Literal" in str(_FIELD_TYPES[name]):
        return raw
    lowered = raw.strip().lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise ConfigError(name, f"environment variable {ENV_PREFIX}{name.upper()}={raw!r} is not a valid value") from None


def _file_values(config_file: str | os.PathLike | None, environ: dict[str, str]) -> dict[str, Any]:
    path = config_file or environ.get(_env.CONFIG)
    if not path:
        return {}
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("config_file", f"{path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config_file", f"{path} is not valid TOML: {exc}") from None
    table = _engine_table(data, path)
    if "api_key" in table:
        _check_private(path)
    return table


def _check_private(path: str | os.PathLike) -> None:
    """A file holding a key is refused when others may read it, as a keys file is."""
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError("config_file", f"{path} holds api_key and is readable by others "
                          f"(mode {oct(mode & 0o777)}): chmod 600 {path}, or give the key in "
                          f"${_env.API_KEY} instead")


def api_key_source(config_file: str | os.PathLike | None = None,
                   environ: Mapping[str, str] | None = None) -> str:
    """Where ``load_config`` takes the key from (for an error about it), else where it
    would look: the variable's name or the config file's, never the key."""
    env = dict(os.environ if environ is None else environ)
    if env.get(_env.API_KEY):
        return f"${_env.API_KEY}"
    path = config_file or env.get(_env.CONFIG)
    if "api_key" in _file_values(config_file, env):
        return f"api_key in {path}"
    if env.get("WANDB_API_KEY"):
        return "$WANDB_API_KEY"
    return f"${_env.API_KEY} or $WANDB_API_KEY"


def _engine_table(data: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """The ``[engine]`` table; any other table or an unknown key in it is a typo."""
    for name in data:
        if name != "engine":
            raise ConfigError("config_file", f"{path}: unknown table [{name}]"
                              f"{'; did you mean [engine]?' if _env.closest(name, ['engine']) else ''} "
                              "(settings live in the [engine] table)")
    table = data.get("engine", {})
    if not isinstance(table, dict):
        raise ConfigError("config_file", f"{path}: [engine] must be a table")
    for key in table:
        if key not in _FIELD_TYPES:
            raise ConfigError(key, f"{path}: unknown setting in [engine]"
                              f"{_env.did_you_mean(key, _FIELD_TYPES)} (config/engine.toml lists them all)")
    return table


def set_outside_arguments(name: str, config_file: str | os.PathLike | None = None,
                          environ: dict[str, str] | None = None) -> bool:
    """Whether the config file or an ``ENGINE_*`` variable sets ``name``: a command with
    defaults of its own (the relay's ``ring_bytes``) applies them only where neither does."""
    env = dict(os.environ if environ is None else environ)
    return name in _env_values(env) or name in _file_values(config_file, env)


def load_config(
    config_file: str | os.PathLike | None = None,
    environ: dict[str, str] | None = None,
    **overrides: Any,
) -> EngineConfig:
    """Merge default < file < env < arguments and validate; errors name the field."""
    env = dict(os.environ if environ is None else environ)
    merged: dict[str, Any] = {}
    merged.update(_file_values(config_file, env))
    merged.update(_env_values(env))
    merged.update({k: v for k, v in overrides.items() if v is not None})
    if "url" not in merged and env.get("WF_TRACE_SERVER_URL"):
        merged["url"] = env["WF_TRACE_SERVER_URL"]
    if "api_key" not in merged and env.get("WANDB_API_KEY"):
        merged["api_key"] = env["WANDB_API_KEY"]
    return validate(_convert(merged))


def _convert(values: dict[str, Any]) -> EngineConfig:
    unknown = sorted(set(values) - set(_FIELD_TYPES))
    if unknown:
        raise ConfigError(unknown[0], f"unknown setting{_env.did_you_mean(unknown[0], _FIELD_TYPES)}")
    try:
        return msgspec.convert(values, EngineConfig, strict=False)
    except msgspec.ValidationError as exc:
        field = _field_of(str(exc))
        raise ConfigError(field, str(exc)) from None


def _field_of(message: str) -> str:
    """msgspec's messages end with ``- at `$.field```; pull the field name out."""
    marker = "`$."
    if marker in message:
        return message.split(marker, 1)[1].split("`", 1)[0].split("[", 1)[0]
    return "config"


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(base) / "engine"


def default_dead_letter_path() -> Path:
    """Where dead letters go when ``dead_letter_path`` is not set."""
    return default_state_dir() / "dead_letters.jsonl"


def default_spool_dir(url: str) -> Path:
    """The spool of ``spool_dir = "auto"`` toward ``url``: one folder per server under this
    user's state directory, so the next engine toward the same server (or ``engine replay
    --to URL``) finds and sends what an outage left, and no engine sends another server's.
    Named by host and port (no credentials) and a digest of the whole URL, spelled as one
    server: the scheme and host in lower case, no default port, no trailing slash (each
    spelling of a server had a spool of its own, and `engine replay --to` another spelling
    found none)."""
    parts = urllib.parse.urlsplit(url.rstrip("/"))
    try:
        port = parts.port
    except ValueError:  # not a port: the digest keeps servers apart anyway
        port = None
    scheme = parts.scheme.lower()
    if port == {"http": 80, "https": 443}.get(scheme):
        port = None
    host = "".join(c if c.isalnum() or c in ".-" else "_"
                   for c in (parts.hostname or "server").lower())
    digest = hashlib.sha256(_one_spelling(parts, scheme, port).encode()).hexdigest()[:8]
    return default_state_dir() / "spool" / f"{host}{f'-{port}' if port else ''}-{digest}"


def _one_spelling(parts: urllib.parse.SplitResult, scheme: str, port: int | None) -> str:
    """The URL ``parts`` split, spelled as :func:`default_spool_dir` names it (a URL already
    spelled so is itself: the folders engines made before keep their names)."""
    netloc = parts.netloc.rpartition("@")[0]  # credentials as they were written
    host = (parts.hostname or "").lower()
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    netloc = f"{netloc}@{host}" if netloc else host
    if port is not None:
        netloc += f":{port}"
    return urllib.parse.urlunsplit((scheme, netloc, parts.path.rstrip("/"), parts.query,
                                    parts.fragment))


# spool_dir's words (any case): "auto" the default spool, the others none
_SPOOL_WORDS: dict[str, str | None] = {"auto": "auto", "off": None, "none": None, "": None}


def spool_path(cfg: EngineConfig) -> str | None:
    """The folder ``cfg`` spools to, or None (no spool: the dead letters instead)."""
    value = cfg.spool_dir
    if value is not None and value.strip().lower() in _SPOOL_WORDS:
        value = _SPOOL_WORDS[value.strip().lower()]
    if value == "auto":
        return str(default_spool_dir(cfg.url))
    return value


def persisted_to(cfg: EngineConfig) -> str:
    """Where what is not delivered goes, in log lines' words: the spool, else the dead
    letters."""
    if spool := spool_path(cfg):
        return f"the spool {spool}"
    return f"the dead letters {cfg.dead_letter_path or default_dead_letter_path()}"
