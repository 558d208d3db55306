"""The ``engine`` command: serve, demo (more subcommands arrive with their issues)."""

from __future__ import annotations

import argparse
import os
import sys

ENGINE_API_KEY_ENV = "ENGINE_API_KEY"


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _add_serve(subparsers: argparse._SubParsersAction) -> None:
    from engine.server import DEFAULT_MAX_BODY_BYTES, default_db_path

    serve = subparsers.add_parser(
        "serve", help="run the local trace server", description="Run the local trace server."
    )
    serve.add_argument(
        "--db", type=str, default=None, help=f"SQLite file (default {default_db_path()})"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=6345, help="port to bind; 0 picks a free one")
    serve.add_argument(
        "--store", choices=("sqlite", "count"), default="sqlite",
        help="sqlite stores calls; count only decodes and counts them (benchmarks)",
    )  # fmt: skip
    serve.add_argument(
        "--max-body-bytes", type=_positive_int, default=DEFAULT_MAX_BODY_BYTES,
        help="largest request body accepted, before and after decompression",
    )  # fmt: skip
    serve.add_argument(
        "--api-key", default=None,
        help=f"require HTTP Basic api:<key> (default ${ENGINE_API_KEY_ENV}; unset = no auth)",
    )  # fmt: skip
    serve.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from engine.server import run_server

    run_server(
        host=args.host,
        port=args.port,
        db_path=args.db,
        store=args.store,
        max_body_bytes=args.max_body_bytes,
        api_key=args.api_key or os.environ.get(ENGINE_API_KEY_ENV) or None,
    )
    return 0


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo", help="run an eval workload through the engine into the local trace server",
        description="Start the local trace server, trace an eval-like workload from several "
        "processes through the engine, and verify every call was stored.",
    )  # fmt: skip
    demo.add_argument("--processes", type=_positive_int, default=2, help="producer processes")
    demo.add_argument("--examples", type=_positive_int, default=5000,
                      help="eval examples per process (3 traced calls each)")
    demo.add_argument("--db", default=None, help="SQLite file (default: a fresh temporary one)")
    demo.add_argument("--compression", choices=("auto", "zstd", "none"), default="auto")
    demo.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from engine._demo import run_demo

    return run_demo(args.processes, args.examples, args.db, args.compression)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="engine", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_serve(subparsers)
    _add_demo(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return int(args.func(args) or 0)
