"""A tiny loopback trace-server sink for the peer-driver tests: accepts, counts, answers.

It speaks just enough for weave 0.54.0 to run offline against it: ``GET /server_info``,
the W&B GraphQL queries ``weave.init`` sends, the call ingest routes (counted), and an
empty JSON answer for every other POST (objects, ops, files). ``GET /_stub/count``
answers ``{"calls": N}``: distinct call ids seen ended (complete items or ends).

    with StubSink() as sink:   # binds 127.0.0.1 on an ephemeral port
        ... sink.url, sink.count_url, sink.calls_stored() ...
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from aiohttp import web

_SERVER_INFO = {"min_required_weave_python_version": "0.0.0", "trace_server_version": "0.0.0"}
_ENTITY = "bench-entity"


def _graphql_answer(query: str, variables: dict[str, Any]) -> dict[str, Any]:
    """The minimal GraphQL data each query of weave.init needs."""
    if "upsertModel" in query:
        return {"upsertModel": {"model": {"name": variables.get("name"), "description": None}}}
    if "project(" in query:
        return {"project": {"name": variables.get("name")}}
    if "viewer" in query:
        return {"viewer": {"username": "bench", "defaultEntity": {"name": _ENTITY}}}
    if "serverInfo" in query:
        return {"serverInfo": {"frontendHost": ""}}
    return {}


class StubSink:
    """An aiohttp sink on its own event-loop thread; a context manager that always stops."""

    def __init__(self, *, stall_ingest: bool = False) -> None:
        # With stall_ingest, ingest requests wait until the sink stops: a hung server.
        self.stall_ingest = stall_ingest
        self._release: asyncio.Event | None = None
        self.ended_ids: set[str] = set()
        self.requests_by_route: dict[str, int] = {}
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="stub-sink", daemon=True
        )
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def count_url(self) -> str:
        return f"{self.url}/_stub/count"

    def calls_stored(self) -> int:
        return len(self.ended_ids)

    def __enter__(self) -> StubSink:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._release is not None:
            self._loop.call_soon_threadsafe(self._release.set)
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    async def _start(self) -> None:
        self._release = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/server_info", self._server_info)
        app.router.add_get("/_stub/count", self._count)
        app.router.add_post("/graphql", self._graphql)
        app.router.add_post("/{tail:.*}", self._post)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _server_info(self, request: web.Request) -> web.Response:
        return web.json_response(_SERVER_INFO)

    async def _count(self, request: web.Request) -> web.Response:
        return web.json_response({"calls": self.calls_stored()})

    async def _graphql(self, request: web.Request) -> web.Response:
        body = await request.json()
        data = _graphql_answer(body.get("query", ""), body.get("variables") or {})
        return web.json_response({"data": data})

    async def _post(self, request: web.Request) -> web.Response:
        path = request.path
        route = "/v2/*/*/" + path.split("/", 4)[4] if path.startswith("/v2/") else path
        self.requests_by_route[route] = self.requests_by_route.get(route, 0) + 1
        raw = await request.read()
        if self.stall_ingest and "call" in route:
            await self._release.wait()
        body = json.loads(raw) if raw and request.content_type == "application/json" else {}
        return web.json_response(self._ingest(route, body))

    def _ingest(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        """Count ended calls on the ingest routes; anything else gets an empty answer."""
        if route == "/v2/*/*/calls/complete":
            self.ended_ids.update(item["id"] for item in body["batch"])
        elif route == "/call/upsert_batch":
            ends = (item["req"]["end"] for item in body["batch"] if item["mode"] == "end")
            self.ended_ids.update(end["id"] for end in ends)
            return {"res": []}
        elif route in ("/call/end", "/v2/*/*/call/end"):
            self.ended_ids.add(body["end"]["id"])
        elif route in ("/call/start", "/v2/*/*/call/start"):
            start = body["start"]
            return {"id": start.get("id"), "trace_id": start.get("trace_id")}
        elif route.endswith("/obj/create") or route.endswith("/create"):
            return {"digest": "0" * 43, "object_id": "stub", "version_index": 0}
        return {}
