"""What the commands share: their two kinds of error, argument types that check values at
parse time, the engine-settings flags, and logging."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import threading
from collections.abc import Iterator
from typing import Any

from engine.common import _env, _logging
from engine.common._config import EngineConfig, load_config
from engine.common._errors import ConfigError, EngineError
from engine.common._project import EXAMPLE, shape_problem

_SECRET_FIELDS = frozenset({"api_key"})  # from the environment or the file only: argv is public


class UsageError(EngineError):
    """The command line or the configuration is wrong: exit code 2."""


class CommandFailed(EngineError):
    """The command was right but could not be carried out: exit code 1."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command's main thread is (:func:`sigterm_interrupts`), so
    the command stops as on Ctrl-C: its ``with`` blocks close (an Engine delivers what it
    holds), then one line and exit code 143."""


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within: the first SIGTERM raises :class:`Terminated` in the main thread (later ones
    are ignored while the command stops; its close is bounded by the engine's
    ``shutdown_timeout_s``). A forked child (an ingest worker) dies by the signal, as it
    would without this: what it wrote is in the rings, the checkpoint only what was
    acknowledged. Without this, the engine's own SIGTERM handler flushes and the process
    dies by the signal, skipping the command's clean-up and its last line."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()

    def terminated(signum: int, frame: Any) -> None:
        if os.getpid() != owner:  # a forked child: SIGTERM's default, now
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (raised, printed by ``main``)."""

    def error(self, message: str) -> Any:  # argparse's signature: it never returns
        # "ambiguous option: --p=VALUE could match ...": the flag, not its value
        message = _AMBIGUOUS_VALUE.sub(r"\1 could match ", message, count=1)
        raise usage_error(self.prog, message)


_AMBIGUOUS_VALUE = re.compile(r"^(ambiguous option: [^=\s]+)=.* could match ", re.DOTALL)
_NEGATIVE_NUMBER = re.compile(r"-\d+(\.\d*)?|-\.\d+")


def unknown_flags(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """The flags in ``argv`` that neither ``parser`` nor the command named takes, as typed
    up to any ``=``. Said before argparse parses: its errors echo the word after an unknown
    flag ("unrecognized arguments: --apikey SECRET", or "argument FILE: SECRET: no such
    file" where a positional took it) and a ``=VALUE``, a secret under a misspelt name."""
    unknown, current, takes_value = [], parser, False
    for arg in argv:
        if arg == "--":
            break
        if takes_value:
            takes_value = False
        elif not arg.startswith("-") or arg == "-" or _NEGATIVE_NUMBER.fullmatch(arg):
            current = _command(parser, arg) if current is parser else current
        else:
            name = arg.partition("=")[0]
            action = _flag(current, name)
            if action is None:
                unknown.append(name)
            takes_value = action is not None and action.nargs != 0 and "=" not in arg
    return unknown


def _command(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The subcommand's parser (``parser`` itself for a word that is none)."""
    for action in parser._actions:  # argparse has no public way to list them
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return action.choices[name]
    return parser


def _flag(parser: argparse.ArgumentParser, name: str) -> argparse.Action | None:
    """The action of flag ``name``, or of the long flags it abbreviates (the first of
    several: argparse says which ones an ambiguous prefix could mean); None: unknown."""
    flags = parser._option_string_actions
    if name in flags:
        return flags[name]
    if name.startswith("--") and len(name) > 2:
        matches = [flag for flag in flags if flag.startswith(name)]
        if matches:
            return flags[matches[0]]
    return None


def usage_error(prog: str, message: str) -> UsageError:
    where = prog.removeprefix("engine").strip()
    return UsageError(f"{where + ': ' if where else ''}{message} (see `{prog} --help`)")


# -- argument types: each names what is wrong and what would be right --------------------


def positive_int(text: str) -> int:
    value = _int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def port(text: str) -> int:
    value = _int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(
            f"{text} is not a TCP port: use 1-65535, or 0 for a free one")
    return value


def pid(text: str) -> int:
    value = _int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a process id")
    return value


def host(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty: name an address to bind, e.g. 127.0.0.1 "
                                         "(this machine only) or 0.0.0.0 (every interface)")
    return text.strip()


def host_port(text: str) -> tuple[str, int]:
    host, sep, number = text.rpartition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (e.g. 127.0.0.1:6346), got {text!r}")
    return host.strip("[]") or "127.0.0.1", port(number)


def url(text: str) -> str:
    """An http(s) URL with a host and a valid port; the path (a server prefix) is kept."""
    import yarl  # when a command takes a URL: not in the processes that only import this

    from engine.common._redact import redact_url

    shown = repr(redact_url(text))
    try:
        parsed = yarl.URL(text)
        parsed_port = parsed.port
    except ValueError:
        raise argparse.ArgumentTypeError(f"{shown} is not a URL (e.g. http://127.0.0.1:6345)") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise argparse.ArgumentTypeError(
            f"{shown} is not an http(s) URL with a host (e.g. http://127.0.0.1:6345)")
    if parsed_port is not None and not 1 <= parsed_port <= 65535:
        raise argparse.ArgumentTypeError(f"{shown}: port {parsed_port} is not 1-65535")
    if parsed.query_string or parsed.fragment:
        raise argparse.ArgumentTypeError(f"{shown}: a server URL has no ?query or #fragment")
    return text.rstrip("/")


def project(text: str) -> str:
    """A project to read, copy or probe: any a store may hold (one written by an earlier
    version too); a server refuses writes to a name a client could not have meant."""
    problem = shape_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a project id: it {problem}; {EXAMPLE}")
    return text


def existing_file(text: str) -> str:
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a directory, not a file")
    if not os.access(text, os.R_OK):
        raise argparse.ArgumentTypeError(f"{text}: not readable by this user")
    return text


def existing_dir(text: str) -> str:
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"{text}: no such directory")
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is not a directory")
    return text


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


# -- engine settings and logs --------------------------------------------------------------


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` plus one ``--<field>`` per EngineConfig setting (flag > env > file)."""
    group = parser.add_argument_group("engine settings (see config/engine.toml)")
    add_config_file_flag(group)
    for name in EngineConfig.__struct_fields__:
        if name not in _SECRET_FIELDS and name not in ("url", "project"):
            group.add_argument("--" + name.replace("_", "-"), dest=f"cfg_{name}", default=None,
                               metavar="VALUE")
    add_log_flags(parser)


def add_config_file_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--config", type=existing_file, default=None,
                        help=f"TOML file of settings (default ${_env.CONFIG})")


def config_overrides(args: argparse.Namespace) -> dict[str, str]:
    prefix = "cfg_"
    return {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix) and v is not None}


def load_settings(args: argparse.Namespace, **fixed: Any) -> EngineConfig:
    """Every setting from flags, env and file, validated now (a bad one is a usage error)."""
    try:
        return load_config(args.config, **fixed, **config_overrides(args))
    except ConfigError as exc:
        raise UsageError(config_message(exc)) from exc


def config_message(exc: ConfigError) -> str:
    """"setting linger_ms: must be >= 0", or the message alone when it names its source."""
    if exc.field in ("config_file", "environment"):
        return str(exc).split(": ", 1)[1]
    return f"setting {exc}"


def add_log_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-format", choices=_logging.FORMATS, default=None,
                        help=f"log lines on stderr: plain text, logfmt or JSON (default "
                        f"${_env.LOG_FORMAT}, else text); the sender process uses it too")
    parser.add_argument("--log-level", default=None, type=str.upper,
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help=f"default ${_env.LOG_LEVEL}, else INFO; the sender process logs at it too")


def setup_logging(args: argparse.Namespace) -> None:
    """Log as asked, and hand the choice to the sender process through its environment."""
    log_format = args.log_format or os.environ.get(_env.LOG_FORMAT) or "text"
    level = args.log_level or _logging.level_from_env("INFO")
    os.environ[_env.LOG_FORMAT] = log_format
    os.environ[_env.LOG_LEVEL] = level
    _logging.setup(log_format, level)


def add_command(subparsers: argparse._SubParsersAction, name: str, summary: str,
                description: str) -> argparse.ArgumentParser:
    """A subcommand's parser; ``--debug`` is accepted after the command name too."""
    parser = subparsers.add_parser(name, help=summary, description=description)
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="print the traceback of an error")
    return parser


def add_max_connections_flag(parser: argparse.ArgumentParser, command: str) -> None:
    from engine.server._limits import DEFAULT_MAX_CONNECTIONS

    parser.add_argument(
        "--max-connections", type=positive_int, default=DEFAULT_MAX_CONNECTIONS,
        help=f"open connections served at once (default {DEFAULT_MAX_CONNECTIONS}); past it a "
        f"new one gets a 503 naming the limit, instead of the {command} running out of file "
        "descriptors",
    )  # fmt: skip


def add_key_flags(parser: argparse.ArgumentParser, env_help: str) -> None:
    parser.add_argument(
        "--keys-file", default=None,
        help="API keys and the projects each may read or write, one '<key> rw|ro <project,...>' "
        f"per line, mode 0600 (default $ENGINE_KEYS_FILE); {env_help}. Without keys only a "
        "loopback address is served (docs/serve.md)",
    )  # fmt: skip


def add_tls_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tls-cert", default=os.environ.get(_env.TLS_CERT) or None, metavar="FILE",
        help="serve HTTPS with this certificate (PEM, its chain after it; default "
        f"${_env.TLS_CERT}); needs --tls-key",
    )  # fmt: skip
    parser.add_argument(
        "--tls-key", default=os.environ.get(_env.TLS_KEY) or None, metavar="FILE",
        help=f"the certificate's private key (PEM, unencrypted, mode 0600; default ${_env.TLS_KEY})",
    )  # fmt: skip


def key_flag_in(argv: list[str]) -> bool:
    """Whether ``argv`` holds ``--api-key`` (``=VALUE`` or not, or a prefix argparse would
    take for it): no command takes it, and argparse's errors would echo the key."""
    for arg in argv:
        if arg == "--":
            return False
        name = arg.partition("=")[0]
        if name.startswith("--api") and "--api-key".startswith(name):
            return True
    return False


def key_flag_refused(command: str | None) -> UsageError:
    """The error for ``--api-key``: where the command reads its key instead (never the value)."""
    where = {"serve": f"${_env.API_KEY} or in a keys file (--keys-file FILE, mode 0600; see "
                      "docs/serve.md)",
             "relay": f"${_env.API_KEY} (its upstream key) and its clients' keys in a keys file "
                      "(--keys-file FILE, mode 0600; see docs/serve.md)",
             "copy": f"${_env.COPY_FROM_API_KEY} / ${_env.COPY_TO_API_KEY}, else ${_env.API_KEY}"}
    return UsageError(f"{command or 'engine'}: --api-key is not accepted: a key on the command "
                      "line is visible to every user of this machine (ps). Put it in "
                      f"{where.get(command or '', f'${_env.API_KEY}')}")
