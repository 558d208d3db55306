"""What the relay's handlers share: the engine, the ring writer, the proxy session, counters."""

from __future__ import annotations

from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from engine.common._auth import url_credentials
from engine.common._http import choose_proxy
from engine.producer._engine import Engine
from engine.relay._writer import CallItem, RingWriter, mode_of


class RelayCounters(msgspec.Struct, kw_only=True):
    """What the relay took in since it started (exposed on ``/metrics``)."""

    ingest_body_bytes: int = 0
    items_start: int = 0
    items_end: int = 0
    items_complete: int = 0
    rejected_full: int = 0
    proxied_requests: int = 0
    proxy_errors: int = 0
    clients_gone: int = 0  # closed or reset their connection before their request was read

    def count_items(self, items: list[CallItem]) -> None:
        for item in items:
            mode = mode_of(item)
            if mode == "complete":
                self.items_complete += 1
            elif mode == "start":
                self.items_start += 1
            else:
                self.items_end += 1


class RelayState:
    def __init__(self, engine: Engine, upstream: str, max_body_bytes: int) -> None:
        self.engine = engine
        # proxied requests carry the client's own Authorization, never the credentials of
        # the relay's upstream URL (those are its sender's, for what it ingests)
        self.upstream = url_credentials(upstream)[0].rstrip("/")
        self.route = choose_proxy(self.upstream)  # once: every proxied request goes the same way
        self.max_body_bytes = max_body_bytes
        self.writer = RingWriter(engine.producer())
        self.counters = RelayCounters()
        self.session: aiohttp.ClientSession | None = None
        self.upstream_failing = 0  # proxied requests unanswered since the upstream last answered

    def metrics(self) -> dict[str, Any]:
        return {**self.engine.stats(), "relay": msgspec.structs.asdict(self.counters)}


RELAY = web.AppKey("engine_relay_state", RelayState)
