"""``engine relay``: accept trace-server traffic from unmodified clients and forward it
through an :class:`engine.Engine` (batching, compression, retries, spool); every other
route is proxied to the upstream unchanged."""

from engine.relay._app import build_app, run_relay, start_relay

__all__ = ["build_app", "run_relay", "start_relay"]
