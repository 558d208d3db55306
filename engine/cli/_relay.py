"""``engine relay``: accept trace-server ingest, forward it through the engine."""

from __future__ import annotations

import argparse

from engine.cli import _args, _probe, _summary
from engine.cli._args import CommandFailed


def add(subparsers: argparse._SubParsersAction) -> None:
    from engine.common._config import DEFAULT_URL
    from engine.server import DEFAULT_MAX_BODY_BYTES

    relay = _args.add_command(
        subparsers, "relay", "accept trace-server traffic and forward it through the engine",
        "Accept ingest from unmodified trace-server clients, answer once items are in the "
        "engine, deliver them upstream (batched, compressed, retried, spooled); proxy every "
        "other route to the upstream unchanged.")
    relay.add_argument("--listen", type=_args.host_port, default=("127.0.0.1", 6346),
                       help="HOST:PORT to bind (default 127.0.0.1:6346; port 0 picks one)")
    relay.add_argument("--upstream", type=_args.url, default=None,
                       help="trace server URL (default: the url setting from env/config, else "
                            f"{DEFAULT_URL}, where `engine serve` listens by default; the relay "
                            "does not start one)")
    relay.add_argument("--max-body-bytes", type=_args.positive_int,
                       default=DEFAULT_MAX_BODY_BYTES,
                       help="largest ingest body accepted, before and after decompression (default "
                       f"{DEFAULT_MAX_BODY_BYTES // 2**20} MiB)")
    _args.add_max_connections_flag(relay, "relay")
    _args.add_tls_flags(relay)
    _args.add_key_flags(relay, "the relay delivers under its own key, $ENGINE_API_KEY or "
                               "$WANDB_API_KEY")
    _args.add_config_flags(relay)
    relay.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.common._config import api_key_source, persisted_to
    from engine.relay import run_relay
    from engine.relay._app import RELAY_PROJECT
    from engine.server._auth import load_key_ring
    from engine.server._tls import server_context

    _args.setup_logging(args)
    server_context(args.tls_cert, args.tls_key)  # a bad pair is said before the upstream's look
    fixed = {"project": RELAY_PROJECT, **({"url": args.upstream} if args.upstream else {})}
    cfg = _args.load_settings(args, **fixed)
    _probe.check_server(cfg.url, cfg.api_key, "relay: upstream",
                        "accepting traffic anyway: calls wait in the ring until it answers; "
                        f"those not delivered within delivery_deadline_s="
                        f"{cfg.delivery_deadline_s:g} s go to {persisted_to(cfg)}",
                        key_from=api_key_source(args.config))
    host, port = args.listen
    try:
        keys = load_key_ring(args.keys_file, env_key=False)  # $ENGINE_API_KEY is the upstream's
        stats = run_relay(cfg.url, host, port, args.max_body_bytes, args.config, keys=keys,
                          max_connections=args.max_connections, tls_cert=args.tls_cert,
                          tls_key=args.tls_key, **_args.config_overrides(args))
    except OSError as exc:
        raise CommandFailed(f"relay: cannot listen on {host}:{port}: {exc.strerror or exc} "
                            "(pick another --listen port; 0 picks a free one)") from exc
    line, delivered = _summary.delivery(stats, cfg)
    print(f"engine relay: stopped; {line}", flush=True)
    return 0 if delivered else 1

