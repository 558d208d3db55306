"""What every handler shares: the store, the body limit, the counters."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from engine.common._project import shape_problem
from engine.server._body import ApiError, decode_json, read_body
from engine.server._ingest_models import Req, decode_ingest
from engine.server._op_watch import OpWatch
from engine.server._store import Store

DEFAULT_ENTITY = "engine"


class Counters(msgspec.Struct, kw_only=True):
    """What the server took in since it started (``GET /stats``); items, not distinct ids."""

    requests: int = 0
    body_bytes: int = 0
    calls_started: int = 0
    calls_ended: int = 0
    calls_complete: int = 0
    rejected_requests: int = 0  # answered with a 4xx by our own checks
    store_unavailable: int = 0  # answered 503: the store was locked or could not be reached
    store_full: int = 0  # answered 507: the store's disk was full
    clients_gone: int = 0  # closed or reset their connection before their request was read
    calls_expired: int = 0  # deleted past their project's retention (``_retention``)
    retention_passes: int = 0  # passes over the retained projects that ran to the end
    retention_last_pass_ms: int = 0  # how long the last of them took
    ops_missing: int = 0  # weave op refs calls named that the store did not have (``_op_watch``)
    # ingest requests by route (v1 and v2 of a route counted together): how a client batches
    requests_upsert_batch: int = 0
    requests_calls_complete: int = 0
    requests_call_start: int = 0
    requests_call_end: int = 0


class ServerState:
    def __init__(self, store: Store, max_body_bytes: int, default_entity: str = DEFAULT_ENTITY):
        self.store = store
        self.max_body_bytes = max_body_bytes
        self.default_entity = default_entity
        self.counters = Counters()
        self.projects: set[tuple[str, str]] = set()  # created through GraphQL upsertModel
        self.store_id: str | None = None  # the store's, once read (``/server_info``)
        self.op_watch: OpWatch | None = None  # set by the app (``_op_watch``)

    async def read(self, request: web.Request) -> bytes:
        """The body, limited and decompressed, counted in ``counters``."""
        body = await read_body(request, self.max_body_bytes)
        self.counters.requests += 1
        self.counters.body_bytes += len(body)
        return body

    async def decode(self, request: web.Request, type_: type) -> Any:
        return decode_json(await self.read(request), type_)

    def saw_starts(self, calls: Any) -> None:
        """The started (or complete) calls of an ingest request: their weave ops are
        looked up later (:mod:`engine.server._op_watch`)."""
        if self.op_watch is not None:
            self.op_watch.saw(calls)

    async def decode_ingest(self, request: web.Request, type_: type[Req]) -> Req:
        """A call-ingest body as its raw model (:mod:`engine.server._ingest_models`)."""
        return decode_ingest(await self.read(request), type_)


STATE = web.AppKey("engine_server_state", ServerState)


def state_of(request: web.Request) -> ServerState:
    return request.app[STATE]


def check_project_id(project_id: str, field: str) -> None:
    """``entity/project``: exactly one slash, neither part empty (WIRE.md §2; the rule is
    engine.common._project's, which the producer and the CLI apply too)."""
    if shape_problem(project_id) is not None:
        raise ApiError(422, f"{field}: project_id {project_id!r} is not 'entity/project'")
