"""A loopback sink that decompresses and fully decodes every call body, then drops it.

    python -m bench.decode_sink [--port 0]     # prints "listening on http://127.0.0.1:PORT"

``engine serve --store count`` keeps call fields as raw JSON slices (it checks their syntax,
builds no Python objects), so it costs a server little. A real trace server decodes what it
stores; this sink stands for one: every body is decompressed (zstd, gzip) and decoded into
the typed wire models of ``engine.wire.calls`` (timestamps parsed, ``inputs``, ``output``,
``summary`` and ``attributes`` built as Python dicts and lists), then counted and dropped.
Its CPU per call is what decoding costs, the same for every contender (the bench reports it
from ``/proc`` beside the clients' own).

Routes: the call-ingest routes every contender uses (``/call/upsert_batch``,
``/v2/{entity}/{project}/calls/complete``, v2 and v1 ``call/start`` / ``call/end``),
``/server_info`` (advertising zstd, as ``engine serve`` does) and ``/stats`` with the counters
``engine serve`` reports, so the harness reads both sinks alike.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from aiohttp import web

from engine.server._body import ACCEPTED_ENCODINGS, ApiError, decode_json, read_body
from engine.wire.calls import (
    Batch,
    CallEndReq,
    CallStartReq,
    CallsUpsertCompleteReq,
    EndBatchItem,
)

_MAX_BODY_BYTES = 64 << 20
COUNTERS = web.AppKey("counters", dict)
LATENCY_S = web.AppKey("latency_s", float)


async def _decoded(request: web.Request, type_: type) -> Any:
    counters = request.app[COUNTERS]
    body = await read_body(request, _MAX_BODY_BYTES)
    if request.app[LATENCY_S]:
        await asyncio.sleep(request.app[LATENCY_S])
    counters["requests"] += 1
    counters["body_bytes"] += len(body)
    return decode_json(body, type_)


async def _upsert_batch(request: web.Request) -> web.Response:
    batch = await _decoded(request, Batch)
    counters, results = request.app[COUNTERS], []
    for item in batch.batch:
        if isinstance(item, EndBatchItem):
            counters["calls_ended"] += 1
            results.append({})
        else:
            counters["calls_started"] += 1
            start = item.req.start
            results.append({"id": start.id, "trace_id": start.trace_id})
    return web.json_response({"res": results})


async def _complete(request: web.Request) -> web.Response:
    req = await _decoded(request, CallsUpsertCompleteReq)
    request.app[COUNTERS]["calls_complete"] += len(req.batch)
    return web.json_response({})


async def _start(request: web.Request) -> web.Response:
    req = await _decoded(request, CallStartReq)
    request.app[COUNTERS]["calls_started"] += 1
    return web.json_response({"id": req.start.id, "trace_id": req.start.trace_id})


async def _end(request: web.Request) -> web.Response:
    await _decoded(request, CallEndReq)
    request.app[COUNTERS]["calls_ended"] += 1
    return web.json_response({})


async def _server_info(request: web.Request) -> web.Response:
    return web.json_response({"min_required_weave_python_version": "0.0.1",
                              "trace_server_version": "bench-decode-sink",
                              "accepts_encodings": list(ACCEPTED_ENCODINGS)})


async def _stats(request: web.Request) -> web.Response:
    return web.json_response({"store": "decode", **request.app[COUNTERS]})


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        request.app[COUNTERS]["rejected_requests"] += 1
        return web.json_response({"reason": exc.reason}, status=exc.status)


def build_app(latency_s: float = 0.0) -> web.Application:
    app = web.Application(middlewares=[_errors], client_max_size=_MAX_BODY_BYTES)
    app[LATENCY_S] = latency_s
    app[COUNTERS] = dict.fromkeys(("requests", "body_bytes", "calls_started", "calls_ended",
                                   "calls_complete", "rejected_requests"), 0)
    app.router.add_get("/server_info", _server_info)
    app.router.add_get("/stats", _stats)
    app.router.add_post("/call/upsert_batch", _upsert_batch)
    app.router.add_post("/v2/{entity}/{project}/calls/complete", _complete)
    for prefix in ("", "/v2/{entity}/{project}"):
        app.router.add_post(prefix + "/call/start", _start)
        app.router.add_post(prefix + "/call/end", _end)
    return app


async def serve(host: str, port: int, latency_s: float = 0.0) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # auto_decompress=False: read_body inflates with the size limit
    runner = web.AppRunner(build_app(latency_s), access_log=None, handle_signals=False,
                           auto_decompress=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    print(f"bench decode sink: listening on http://{bound_host}:{bound_port}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="answer every ingest request this much later, as a distant server "
                             "would (its round trip and processing time)")
    args = parser.parse_args(argv)
    import uvloop

    from engine.common._malloc import tune_for_large_buffers

    tune_for_large_buffers()  # as engine serve: megabyte bodies off fresh mmaps
    uvloop.run(serve(args.host, args.port, args.latency_ms / 1000))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
