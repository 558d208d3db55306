"""The ``engine`` command: serve, demo, relay, ingest, replay, stats, calls, copy, backup,
doctor (``python -m engine``).

Each command lives in its own module (``engine/cli/_<command>.py``) with an ``add(subparsers)``
that declares it and a ``run(args)`` that carries it out. Every error a command raises
leaves as one line on stderr, ``engine: error: …``, with exit code 2 for a wrong command
line or setting and 1 for a failure while running; ``--debug`` (or ``ENGINE_LOG_LEVEL=debug``)
prints the traceback first. Output piped into a reader that stops early (``| head``) ends the
command quietly, exit code 141, as SIGPIPE ends a shell tool.

Runs in the command's own process; each command imports the package it drives when it runs.
May import: every package.
"""

from __future__ import annotations

import argparse
import os
import select
import sys
import traceback
from importlib import import_module

from engine.cli._args import (
    CommandFailed,
    Parser,
    Terminated,
    UsageError,
    config_message,
    key_flag_in,
    key_flag_refused,
    unknown_flags,
    usage_error,
)
from engine.common import _env, _logging
from engine.common._config import check_environment
from engine.common._errors import ConfigError, EngineError
from engine.common._machine import platform_problem

COMMANDS = ("serve", "demo", "relay", "ingest", "replay", "stats", "calls", "copy", "backup",
            "doctor")
# the commands that run an engine's producers or sender (engine.common._machine)
_ENGINE_COMMANDS = ("demo", "relay", "ingest", "replay")
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_STDOUT_CLOSED = 141  # 128 + SIGPIPE, as a shell tool killed by it reports


def _version() -> str:
    from importlib.metadata import version

    return version("engine")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="engine", description=__doc__.split("\n\n")[0].replace("``", ""))
    parser.add_argument("--version", action="version", version=f"engine {_version()}")
    parser.add_argument("--debug", action="store_true",
                        help=f"print the traceback of an error (also {_env.LOG_LEVEL}=debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        import_module(f"engine.cli._{name}").add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        code = _run(argv)
        sys.stdout.flush()  # a reader gone finds us here, not in the interpreter's exit
        return code
    except BrokenPipeError as exc:
        if not _stdout_closed():
            return _report(exc, argv)
        # the Python docs' recipe: no more writes to the pipe, not even the exit's flush
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_STDOUT_CLOSED
    except Terminated:
        print("engine: terminated (SIGTERM)", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("engine: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BaseException as exc:  # noqa: BLE001 - the one place every error is turned into a line
        if isinstance(exc, SystemExit):
            raise
        return _report(exc, argv)


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader is gone (and not some connection's pipe broke)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), 0)  # POLLERR is always reported
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll, or stdout is not a file
        return False


def _run(argv: list[str]) -> int:
    if key_flag_in(argv):  # before argparse, whose errors would echo the key
        raise key_flag_refused(next((arg for arg in argv if arg in COMMANDS), None))
    parser = build_parser()
    unknown = unknown_flags(parser, argv)
    if unknown:  # before argparse, whose errors would echo the value after one
        command = next((arg for arg in argv if arg in COMMANDS), None)
        raise usage_error(f"engine {command}" if command else "engine",
                          f"unrecognized arguments: {' '.join(unknown)}")
    args, extras = parser.parse_known_args(argv)
    if extras:
        prog = f"engine {args.command}" if args.command else "engine"
        raise usage_error(prog, f"unrecognized arguments: {' '.join(extras)}")
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.command in _ENGINE_COMMANDS and (unsupported := platform_problem()) is not None:
        raise CommandFailed(unsupported)  # before anything else looks at the system
    check_environment(default="error")  # an operator reads a typo's error at once
    _logging.check_env()
    return int(args.func(args) or 0)


def _report(exc: BaseException, argv: list[str]) -> int:
    if _debug(argv):
        traceback.print_exception(exc)
    print(f"engine: error: {_message(exc)}", file=sys.stderr)
    return EXIT_USAGE if isinstance(exc, (UsageError, ConfigError)) else EXIT_FAILED


def _message(exc: BaseException) -> str:
    if isinstance(exc, (UsageError, CommandFailed)):
        text = str(exc)
    elif isinstance(exc, ConfigError):
        text = config_message(exc)
    elif isinstance(exc, EngineError):
        text = f"{type(exc).__name__}: {exc}"
    elif isinstance(exc, OSError) and exc.filename:
        text = f"{exc.filename}: {exc.strerror or exc}"
    else:
        text = f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback; " \
               "please report it)"
    return " ".join(text.split())  # one line, whatever the message held


def _debug(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get(_env.LOG_LEVEL, "").strip().lower() == "debug"
