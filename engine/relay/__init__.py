"""``engine relay``, its own process: accept trace-server traffic from unmodified clients and
forward it through an :class:`engine.Engine` (batching, compression, retries, spool); every
other route is proxied to the upstream unchanged. Reuses the server's body and reply code.
May import: ``common``, ``native``, ``producer``, ``server``, ``wire``.
"""

from engine.relay._app import build_app, run_relay, start_relay

__all__ = ["build_app", "run_relay", "start_relay"]
