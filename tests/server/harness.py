"""Test harness: an in-process ``engine serve`` on a fresh loop, a JSON client, call builders."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import msgspec
import uvloop

from engine.server import start_server
from engine.server._sqlite_store import SQLiteStore
from engine.wire.calls import CompletedCallSchemaForInsert

T = TypeVar("T")
LOOP_NAMES = ("asyncio", "uvloop")
PROJECT = "ent/proj"
_T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)


def run_on(loop_name: str, coro: Coroutine[Any, Any, T]) -> T:
    loop = uvloop.new_event_loop() if loop_name == "uvloop" else asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


class Api:
    """A thin JSON client: ``status, body = await api.post(path, obj_or_bytes)``."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def post(self, path: str, body: Any, headers: dict[str, str] | None = None):
        data = body if isinstance(body, (bytes, bytearray)) else msgspec.json.encode(body)
        async with self.session.post(self.url + path, data=data, headers=headers) as resp:
            return resp.status, await _parse(resp)

    async def get(self, path: str, headers: dict[str, str] | None = None):
        async with self.session.get(self.url + path, headers=headers) as resp:
            return resp.status, await _parse(resp)

    async def query(self, project_id: str = PROJECT, **options: Any) -> list[dict[str, Any]]:
        body = {"project_id": project_id, **options}
        async with self.session.post(self.url + "/calls/stream_query", json=body) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.content_type == "application/jsonl"
            text = await resp.text()
        return [msgspec.json.decode(line) for line in text.splitlines() if line]


async def _parse(resp: aiohttp.ClientResponse) -> Any:
    raw = await resp.read()
    if resp.content_type == "application/json":
        return msgspec.json.decode(raw)
    return raw


@contextlib.asynccontextmanager
async def serving(
    db_path: Path | None, *, auth: tuple[str, str] | None = None, **options: Any
) -> AsyncIterator[Api]:
    """Start a server on 127.0.0.1 port 0 and a session against it; both always stopped."""
    runner, url = await start_server(host="127.0.0.1", port=0, db_path=db_path, **options)
    try:
        headers = {"Authorization": basic_auth(*auth)} if auth else None
        async with aiohttp.ClientSession(headers=headers) as session:
            yield Api(session, url)
    finally:
        await runner.cleanup()


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def at(seconds: float) -> str:
    return (_T0 + dt.timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def start(call_id: str, *, trace_id: str | None = None, parent_id: str | None = None,
          op_name: str = "weave:///ent/proj/op/predict:v1", t_s: float = 0.0,
          project_id: str = PROJECT, **extra: Any) -> dict[str, Any]:  # fmt: skip
    return {
        "project_id": project_id, "id": call_id, "trace_id": trace_id or f"trace-{call_id}",
        "parent_id": parent_id, "op_name": op_name, "started_at": at(t_s),
        "attributes": {"weave": {"source": "test"}}, "inputs": {"question": f"q-{call_id}"},
        **extra,
    }  # fmt: skip


def end(call_id: str, *, t_s: float = 1.0, project_id: str = PROJECT, **extra: Any):
    return {
        "project_id": project_id, "id": call_id, "ended_at": at(t_s),
        "output": {"answer": f"a-{call_id}"},
        "summary": {"usage": {"gpt-x": {"prompt_tokens": 3, "completion_tokens": 5}}},
        **extra,
    }  # fmt: skip


def complete(call_id: str, **start_options: Any) -> dict[str, Any]:
    finish = end(call_id, t_s=start_options.get("t_s", 0) + 1,
                 project_id=start_options.get("project_id", PROJECT))  # fmt: skip
    return {**start(call_id, **start_options), **finish}


def upsert_batch(*items: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    """``upsert_batch(("start", start("a")), ("end", end("a")))``."""
    return {"batch": [{"mode": mode, "req": {mode: body}} for mode, body in items]}


def store_earlier(db_path: Path, project_id: str, call_id: str) -> None:
    """A finished call written straight into the SQLite file at ``db_path``, as an earlier
    version of the server took it: one in a project this one refuses to write (``e/..``)."""
    store = SQLiteStore(db_path)
    call = CompletedCallSchemaForInsert(
        project_id=project_id, id=call_id, op_name=call_id, trace_id=f"trace-{call_id}",
        started_at=_T0, ended_at=_T0, attributes={}, inputs={}, summary={})  # fmt: skip

    async def put() -> None:
        try:
            await store.insert_calls([], [], [call])
        finally:
            await store.close()

    run_on("asyncio", put())
