"""A loopback server that routes ingest as weave's server does, for ``bench.open_calls``.

    python -m bench.weave_routing [--residence entity/project=merged|complete ...] [--delay-ms N]

It says nothing of ``accepts_upsert_batch`` in ``/server_info`` (weave's hosted server
does not), and decides per project, as weave's server does in its default mode
(``weave/trace_server/project_version/project_version.py``, ``TableRoutingResolver``),
which table a call goes to: the one the project's calls are already in. An empty project's
first v1 write (``/call/upsert_batch``, ``/call/start``, ``/call/end``) puts it in the
legacy table ("merged"), its first v2 write (``calls/complete``, v2 ``call/start`` and
``call/end``) in calls_complete ("complete"); a v1 write to a "complete" project is
answered 400 ``CALLS_COMPLETE_MODE_REQUIRED`` and nothing of it is kept. It stores
nothing: it counts requests by route and which calls arrived whole (a start and an end,
or a complete call); ``GET /stats`` says so. ``--delay-ms`` answers each ingest request that
much later, as a server across a network would. Prints ``listening on URL`` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys

import msgspec
import uvloop
from aiohttp import web

_V2 = re.compile(r"/v2/([^/]+)/([^/]+)/(calls/complete|call/start|call/end)")
_CCMR = msgspec.json.encode({"error_code": "CALLS_COMPLETE_MODE_REQUIRED",
                             "reason": "the project requires calls_complete mode"})


class _Ids(msgspec.Struct):
    id: str
    project_id: str = ""


class _Req(msgspec.Struct):
    start: _Ids | None = None
    end: _Ids | None = None


class _Entry(msgspec.Struct):
    mode: str
    req: _Req


class _Upsert(msgspec.Struct):
    batch: list[_Entry]


class _Complete(msgspec.Struct):
    batch: list[_Ids]


class Routing:
    """Per-project residence, request counters and which calls arrived whole."""

    def __init__(self, residence: dict[str, str]) -> None:
        self.residence = dict(residence)
        self.counters = dict.fromkeys(
            ("requests", "requests_calls_complete", "requests_upsert_batch",
             "requests_call_start", "requests_call_end", "refused_complete_mode_required"), 0)
        self.started: set[str] = set()
        self.ended: set[str] = set()

    def write(self, v1: bool, project: str) -> bool:
        """Whether a write to ``project`` is taken (weave's table routing)."""
        table = self.residence.setdefault(project, "merged" if v1 else "complete")
        return not (v1 and table == "complete")

    def stats(self) -> dict[str, int]:
        return {**self.counters, "calls_started": len(self.started),
                "calls_whole": len(self.started & self.ended)}


def _answer(body: bytes = b"{}", status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


def make_app(routing: Routing, delay_s: float = 0.0) -> web.Application:
    counters = routing.counters

    async def ingest(request: web.Request) -> web.Response:
        body = await request.read()
        if delay_s:
            await asyncio.sleep(delay_s)
        counters["requests"] += 1
        path = request.path
        if path == "/call/upsert_batch":
            counters["requests_upsert_batch"] += 1
            entries = msgspec.json.decode(body, type=_Upsert).batch
            calls = [(e.mode, e.req.start or e.req.end) for e in entries]
            return _v1(calls)
        match = _V2.fullmatch(path)
        if match is None:
            mode = path.rsplit("/", 1)[-1]
            counters[f"requests_call_{mode}"] += 1
            call = getattr(msgspec.json.decode(body, type=_Req), mode)
            return _v1([(mode, call)])
        project, route = f"{match[1]}/{match[2]}", match[3]
        routing.write(False, project)
        if route == "calls/complete":
            counters["requests_calls_complete"] += 1
            ids = [c.id for c in msgspec.json.decode(body, type=_Complete).batch]
            routing.started.update(ids)
            routing.ended.update(ids)
            return _answer()
        mode = route.rsplit("/", 1)[-1]
        counters[f"requests_call_{mode}"] += 1
        call = getattr(msgspec.json.decode(body, type=_Req), mode)
        (routing.started if mode == "start" else routing.ended).add(call.id)
        return _answer(msgspec.json.encode({"id": call.id, "trace_id": call.id})
                       if mode == "start" else b"{}")

    def _v1(calls: list[tuple[str, _Ids]]) -> web.Response:
        projects = {call.project_id for _, call in calls}
        if not all(routing.write(True, p) for p in projects):
            counters["refused_complete_mode_required"] += 1
            return _answer(_CCMR, 400)
        for mode, call in calls:
            (routing.started if mode == "start" else routing.ended).add(call.id)
        return _answer()

    async def server_info(request: web.Request) -> web.Response:
        return _answer(msgspec.json.encode({"min_required_weave_python_version": "0.0.1",
                                            "trace_server_version": "weave-routing-stub"}))

    async def stats(request: web.Request) -> web.Response:
        return _answer(msgspec.json.encode(routing.stats()))

    app = web.Application(client_max_size=64 << 20)
    app.router.add_get("/server_info", server_info)
    app.router.add_get("/stats", stats)
    for route in ("/call/upsert_batch", "/call/start", "/call/end",
                  "/v2/{e}/{p}/calls/complete", "/v2/{e}/{p}/call/start", "/v2/{e}/{p}/call/end"):
        app.router.add_post(route, ingest)
    return app


async def _serve(routing: Routing, delay_s: float) -> None:
    runner = web.AppRunner(make_app(routing, delay_s), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--residence", action="append", default=[], metavar="PROJECT=TABLE",
                        help="a project's calls already in 'merged' or 'complete'")
    parser.add_argument("--delay-ms", type=float, default=0,
                        help="answer each ingest request this much later (default 0)")
    args = parser.parse_args(argv)
    residence = dict(r.split("=", 1) for r in args.residence)
    uvloop.run(_serve(Routing(residence), args.delay_ms / 1000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
