"""The ``engine`` command: serve, demo, relay, ingest, replay, stats (``python -m engine``).

Runs in the command's own process; each command imports the package it drives when it runs.
May import: every package.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from engine.common._redact import redact_url

ENGINE_API_KEY_ENV = "ENGINE_API_KEY"


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


# -- shared by the engine-driving subcommands (relay, ingest, replay) ------------------------

_SECRET_FIELDS = frozenset({"api_key"})  # from the environment or the file only: argv is public


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` plus one ``--<field>`` per EngineConfig setting (flag > env > file)."""
    from engine.common._config import EngineConfig

    group = parser.add_argument_group("engine settings (see config/engine.toml)")
    group.add_argument("--config", default=None, help="TOML file (default $ENGINE_CONFIG)")
    for name in EngineConfig.__struct_fields__:
        if name not in _SECRET_FIELDS and name not in ("url", "project"):
            group.add_argument("--" + name.replace("_", "-"), dest=f"cfg_{name}", default=None,
                               metavar="VALUE")
    _add_log_flags(parser)


def _config_overrides(args: argparse.Namespace) -> dict[str, str]:
    prefix = "cfg_"
    return {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix) and v is not None}


def _add_log_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-format", choices=("text", "logfmt", "json"), default="text",
                        help="log lines on stderr: plain text, logfmt or JSON")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")


class _StructuredFormatter(logging.Formatter):
    """One record per line as logfmt or JSON: time, level, logger, msg, and any ``extra=``
    keys. Values of keys that look secret (``*key*``, ``authorization``, ``token``) never leave."""

    _RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def __init__(self, style: str) -> None:
        super().__init__()
        self._style = style

    def format(self, record: logging.LogRecord) -> str:
        fields = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
                  "logger": record.name, "msg": record.getMessage()}
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


def _setup_logging(args: argparse.Namespace) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if args.log_format != "text":
        handler.setFormatter(_StructuredFormatter(args.log_format))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(args.log_level.upper())


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
        "--store", default="sqlite",
        help="sqlite (one file, the default); clickhouse://USER@HOST:PORT/DB (a ClickHouse "
        "server, shared by replicas; password from $ENGINE_CLICKHOUSE_PASSWORD or "
        "--clickhouse-password-file); chdb:///FOLDER (ClickHouse embedded in this process); "
        "count only decodes and counts calls (benchmarks)",
    )  # fmt: skip
    serve.add_argument(
        "--clickhouse-password-file", default=None,
        help="file holding the ClickHouse password (else $ENGINE_CLICKHOUSE_PASSWORD_FILE, "
        "$ENGINE_CLICKHOUSE_PASSWORD)",
    )  # fmt: skip
    serve.add_argument(
        "--max-body-bytes", type=_positive_int, default=DEFAULT_MAX_BODY_BYTES,
        help="largest request body accepted, before and after decompression",
    )  # fmt: skip
    _add_key_flags(serve, "set $ENGINE_API_KEY for one key that may read and write every project")
    serve.set_defaults(func=_run_serve)


def _add_key_flags(parser: argparse.ArgumentParser, env_help: str) -> None:
    parser.add_argument(
        "--keys-file", default=None,
        help="API keys and the projects each may read or write, one '<key> rw|ro <project,...>' "
        f"per line, mode 0600 (default $ENGINE_KEYS_FILE); {env_help}. Without keys only a "
        "loopback address is served (docs/serve.md)",
    )  # fmt: skip
    # gone: a key on the command line shows in ps; kept only to say so clearly
    parser.add_argument("--api-key", default=None, help=argparse.SUPPRESS)


def _refuse_key_in_argv(args: argparse.Namespace, command: str) -> bool:
    if args.api_key is None:
        return False
    print(f"engine {command}: --api-key is not accepted: a key on the command line is visible "
          f"to every user of this machine (ps). Put it in ${ENGINE_API_KEY_ENV} or in a keys "
          "file (--keys-file FILE, mode 0600; see docs/serve.md)", file=sys.stderr)
    return True


def _run_serve(args: argparse.Namespace) -> int:
    from engine.server import run_server
    from engine.server._auth import load_key_ring

    if _refuse_key_in_argv(args, "serve"):
        return 2
    run_server(
        host=args.host,
        port=args.port,
        db_path=args.db,
        store=args.store,
        clickhouse_password_file=args.clickhouse_password_file,
        max_body_bytes=args.max_body_bytes,
        keys=load_key_ring(args.keys_file),
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
    from engine.cli._demo import run_demo

    return run_demo(args.processes, args.examples, args.db, args.compression)


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _add_relay(subparsers: argparse._SubParsersAction) -> None:
    from engine.server import DEFAULT_MAX_BODY_BYTES

    relay = subparsers.add_parser(
        "relay", help="accept trace-server traffic and forward it through the engine",
        description="Accept ingest from unmodified trace-server clients, answer once items are "
        "in the engine, deliver them upstream (batched, compressed, retried, spooled); proxy "
        "every other route to the upstream unchanged.",
    )  # fmt: skip
    relay.add_argument("--listen", type=_host_port, default=("127.0.0.1", 6346),
                       help="HOST:PORT to bind (default 127.0.0.1:6346; port 0 picks one)")
    relay.add_argument("--upstream", default=None,
                       help="trace server URL (default: url from env/config, else local serve)")
    relay.add_argument("--max-body-bytes", type=_positive_int, default=DEFAULT_MAX_BODY_BYTES,
                       help="largest ingest body accepted, before and after decompression")
    _add_key_flags(relay, "the relay delivers under its own key, $ENGINE_API_KEY or "
                          "$WANDB_API_KEY")
    _add_config_flags(relay)
    relay.set_defaults(func=_run_relay)


def _run_relay(args: argparse.Namespace) -> int:
    from engine.common._config import load_config
    from engine.relay import run_relay
    from engine.server._auth import load_key_ring

    if _refuse_key_in_argv(args, "relay"):
        return 2
    _setup_logging(args)
    overrides = _config_overrides(args)
    upstream = args.upstream or load_config(args.config, project="relay/relay", **overrides).url
    host, port = args.listen
    keys = load_key_ring(args.keys_file, env_key=False)  # $ENGINE_API_KEY is the upstream's
    stats = run_relay(upstream, host, port, args.max_body_bytes, args.config, keys=keys,
                      **overrides)
    return 0 if not stats.get("undelivered") else 1


def _add_ingest(subparsers: argparse._SubParsersAction) -> None:
    ingest = subparsers.add_parser(
        "ingest", help="bulk-load JSON-lines trace files (optionally .zst) through the engine",
        description="Bulk-load start/end/complete items from JSON-lines files (one item per "
        "line, see docs/configuration.md) from several producer processes; resumable.",
    )  # fmt: skip
    ingest.add_argument("files", nargs="+", metavar="FILE")
    ingest.add_argument("--to", default=None,
                        help="trace server URL (default: start `engine serve` with its default db)")
    ingest.add_argument("--processes", type=_positive_int, default=2, help="producer processes")
    ingest.add_argument("--project", default=None, help="entity/project to put every item in")
    ingest.add_argument("--checkpoint", default=None,
                        help="progress file for resuming (default FILE.ingest-checkpoint)")
    ingest.add_argument("--checkpoint-lines", type=_positive_int, default=20_000,
                        help="lines between acknowledged checkpoints, per process")
    ingest.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config_flags(ingest)
    ingest.set_defaults(func=_run_ingest)


def _run_ingest(args: argparse.Namespace) -> int:
    import contextlib

    from engine.cli._ingest import run_ingest
    from engine.server import serve_subprocess

    _setup_logging(args)
    with contextlib.ExitStack() as stack:
        url = args.to or stack.enter_context(serve_subprocess())
        summary = run_ingest(
            args.files, url, processes=args.processes, project=args.project,
            checkpoint_path=args.checkpoint, checkpoint_lines=args.checkpoint_lines,
            progress=False if args.no_progress else None, config_file=args.config,
            **_config_overrides(args),
        )  # fmt: skip
    rate = summary.items / summary.elapsed_s if summary.elapsed_s else 0.0
    print(f"engine ingest: {summary.items:,} items ({summary.completes:,} complete, "
          f"{summary.starts:,} starts, {summary.ends:,} ends) in {summary.elapsed_s:.1f} s "
          f"({rate:,.0f}/s) to {redact_url(url)}; {summary.invalid_lines:,} invalid lines skipped; "
          f"{summary.undelivered:,} undelivered{'; resumed' if summary.resumed else ''}")
    return 0 if not summary.undelivered else 1


def _add_replay(subparsers: argparse._SubParsersAction) -> None:
    replay = subparsers.add_parser(
        "replay", help="re-send what engines kept: rings of dead engines, dead letters, spool",
        description="Recover the ring sets that dead engines delivering to URL left in shared "
        "memory, then POST dead-lettered items and spooled batches again, re-batched to the "
        "server's limit; what is acknowledged is removed, what fails stays for the next "
        "replay. Safe to run while engines write the same files.",
    )  # fmt: skip
    replay.add_argument("--spool", default=None,
                        help="spool directory (default $ENGINE_SPOOL_DIR; unset: none)")
    replay.add_argument("--dead-letters", default=None,
                        help="dead-letter file (default $ENGINE_DEAD_LETTER_PATH, else "
                             "~/.local/state/engine/dead_letters.jsonl)")
    replay.add_argument("--to", required=True, help="trace server URL")
    _add_log_flags(replay)
    replay.set_defaults(func=_run_replay)


def _run_replay(args: argparse.Namespace) -> int:
    import asyncio

    from engine.common._config import default_state_dir
    from engine.sender._replay import recover_rings, replay

    _setup_logging(args)
    api_key = os.environ.get(ENGINE_API_KEY_ENV) or os.environ.get("WANDB_API_KEY") or None
    spool = args.spool or os.environ.get("ENGINE_SPOOL_DIR") or None
    dead = (args.dead_letters or os.environ.get("ENGINE_DEAD_LETTER_PATH")
            or str(default_state_dir() / "dead_letters.jsonl"))
    rings = recover_rings(args.to, api_key)
    summary = asyncio.run(replay(args.to, spool, dead, api_key))
    print(f"engine replay: {len(rings.recovered)} ring sets of dead engines recovered"
          f"{f', {len(rings.kept)} still holding records' if rings.kept else ''}; "
          f"{summary.items_delivered} items delivered in {summary.requests} requests; "
          f"{summary.items_kept} kept for later, {summary.items_rejected} refused again "
          f"(in {dead}), {summary.items_unsaved} not written back; "
          f"{summary.segments_sent} spool segments done, {summary.segments_kept} kept, "
          f"{summary.segments_corrupt} corrupt")
    for name, url, records in rings.elsewhere:
        print(f"engine replay: ring set {name} holds {records} records for {url}: "
              f"`engine replay --to {url}` recovers them")
    return 0 if summary.complete and not rings.kept else 1


def _add_stats(subparsers: argparse._SubParsersAction) -> None:
    stats = subparsers.add_parser(
        "stats", help="live view of a running engine",
        description="Rates, in flight, concurrency, size target and drops of a running engine.",
    )  # fmt: skip
    which = stats.add_mutually_exclusive_group()
    which.add_argument("--pid", type=int, default=None, help="the engine owner's pid")
    which.add_argument("--ring-dir", default=None, help="the engine's ring directory")
    stats.add_argument("--interval-s", type=float, default=1.0, help="refresh period")
    stats.add_argument("--once", action="store_true", help="print one line and exit")
    stats.set_defaults(func=_run_stats)


def _run_stats(args: argparse.Namespace) -> int:
    from engine.cli._stats import find_ring_dir, watch

    return watch(find_ring_dir(args.pid, args.ring_dir), args.interval_s, args.once)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="engine", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_serve(subparsers)
    _add_demo(subparsers)
    _add_relay(subparsers)
    _add_ingest(subparsers)
    _add_replay(subparsers)
    _add_stats(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    from engine.common._errors import ConfigError

    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:  # a setting the user can fix: say which, no traceback
        print(f"engine {args.command}: {exc}", file=sys.stderr)
        return 2
