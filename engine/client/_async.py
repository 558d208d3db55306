"""``AsyncRemoteHTTPTraceServer``: the asyncio twin of ``RemoteHTTPTraceServer``, on aiohttp.

It runs the same plans (``_core``, ``_tables``, ``_feedback``) as the blocking client; only
the driver differs. The aiohttp session is bound to the loop that first uses it and is
remade if used from another loop or from a forked child. Batched mode shares the
blocking client's machinery (the Engine's ring writes do not block; queued feedback is
sent from its own thread).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import aiohttp

from engine.client import _labels, _tables
from engine.client._base import ClientBase
from engine.client._core import ClientCore, HttpRequest, HttpResponse, Plan, RetryPolicy, coerce
from engine.client._feedback import feedback_create_batch
from engine.common._errors import SendError
from engine.common._http import Routes, describe_client_error
from engine.wire import ROUTES
from engine.wire import calls as c
from engine.wire import costs as k
from engine.wire import feedback as f
from engine.wire import files as fi
from engine.wire import labels as lb
from engine.wire import misc as m
from engine.wire import objects as o
from engine.wire import query as q
from engine.wire import refs as r
from engine.wire import tables as t

__all__ = ["AsyncDriver", "AsyncRemoteHTTPTraceServer"]

Req = dict[str, Any]
# one JSONL line may hold a whole call; this only bounds a runaway line
_MAX_LINE_BYTES = 1 << 30


class AsyncDriver:
    """Runs plans and opens streams over one aiohttp session, retrying per policy."""

    def __init__(self, core: ClientCore, retry: RetryPolicy, timeout_s: float) -> None:
        self.core = core
        self._retry = retry
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s,
                                              sock_read=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._routes = Routes()
        self._owner: tuple[int, asyncio.AbstractEventLoop] | None = None

    def _session_here(self) -> aiohttp.ClientSession:
        owner = (os.getpid(), asyncio.get_running_loop())
        if self._session is None or self._session.closed or self._owner != owner:
            # another loop's (or the parent process's) session cannot be used from here
            self._session = aiohttp.ClientSession(timeout=self._timeout, auto_decompress=False)
            self._owner = owner
        return self._session

    async def close(self) -> None:
        if self._session is not None and self._owner == (os.getpid(),
                                                          asyncio.get_running_loop()):
            await self._session.close()
        self._session = None

    async def run(self, plan: Plan[Any]) -> Any:
        try:
            request = next(plan)
            while True:
                response = await self.open(request)
                assert isinstance(response, HttpResponse)
                request = plan.send(response)
        except StopIteration as stop:
            return stop.value

    async def open(self, request: HttpRequest) -> HttpResponse | aiohttp.ClientResponse:
        """The answer, after retries: a streaming 2xx comes back unread."""
        deadline = self._retry.deadline()
        attempt = 0
        while True:
            attempt += 1
            response: HttpResponse | None = None
            error: SendError | None = None
            try:
                answer = await self._send(request)
                if request.stream and 200 <= answer.status < 300:
                    return answer
                response = await _read(answer)
            except SendError as exc:
                error = exc
            delay_s = self._retry.delay_s(request, attempt, deadline, response, error)
            if delay_s is None:
                if error is not None:
                    raise error
                assert response is not None
                return response
            await asyncio.sleep(delay_s)

    async def _send(self, request: HttpRequest) -> aiohttp.ClientResponse:
        route = self._routes(request.url)  # the session's trust_env is off: no ~/.netrc
        try:
            return await self._session_here().request(
                request.method, request.url, data=request.body, headers=dict(request.headers),
                proxy=route.proxy.url, ssl=route.context or True)
        except aiohttp.ClientError as exc:
            raise SendError(f"no answer from the server: "
                            f"{describe_client_error(exc, route.proxy.shown)}",
                            retriable=True) from None
        except (asyncio.TimeoutError, OSError) as exc:
            raise _no_answer(exc) from None

    async def stream(self, name: str, request: HttpRequest,
                     on_404: Callable[[], Any] | None = None) -> AsyncIterator[Any]:
        """Decoded JSONL lines as they arrive; errors and the 404 fallback as in the sync driver."""
        answer = await self.open(request)
        if isinstance(answer, HttpResponse):
            if answer.status == 404 and on_404 is not None:
                for item in await on_404():
                    yield item
                return
            raise self.core.http_error(request, answer.status, answer.body)
        async with answer:
            try:
                while line := await answer.content.readuntil(b"\n", max_size=_MAX_LINE_BYTES):
                    if line.strip():
                        yield self.core.decode_line(name, line)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                raise SendError(f"stream broke off: {type(exc).__name__}: {exc}",
                                retriable=True) from None


async def _read(answer: aiohttp.ClientResponse) -> HttpResponse:
    async with answer:
        try:
            body = await answer.read()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise _no_answer(exc) from None
    return HttpResponse(answer.status, {k.lower(): v for k, v in answer.headers.items()}, body)


def _no_answer(exc: BaseException) -> SendError:
    return SendError(f"no answer from the server: {type(exc).__name__}: {exc}", retriable=True)


class AsyncRemoteHTTPTraceServer(ClientBase):
    """The asyncio client: the same methods as :class:`engine.RemoteHTTPTraceServer`,
    as coroutines (streaming methods are async generators). ``await client.close()``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._driver = AsyncDriver(self._core, self._retry, self._timeout_s)

    async def close(self) -> None:
        if self._batched is not None:
            await asyncio.to_thread(self._batched.close)
        await self._driver.close()

    async def __aenter__(self) -> AsyncRemoteHTTPTraceServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, name: str, req: Any) -> Any:
        return await self._driver.run(self._core.call(name, req))

    def _stream(self, name: str, req: Any, on_404: Any = None) -> AsyncIterator[Any]:
        request = self._core.json_request(name, coerce(req, ROUTES[name].req))
        return self._driver.stream(name, request, on_404)

    # -- calls ------------------------------------------------------------------------------

    async def call_start(self, req: c.CallStartReq | Req) -> c.CallStartRes:
        if self._batched is not None:
            return self._batched.call_start(req)
        return await self._call("call_start", req)

    async def call_end(self, req: c.CallEndReq | Req) -> c.CallEndRes:
        if self._batched is not None:
            return self._batched.call_end(req)
        return await self._call("call_end", req)

    async def call_start_batch(self, req: c.CallCreateBatchReq | Req) -> c.CallCreateBatchRes:
        if self._batched is not None:
            return self._batched.call_start_batch(req)
        return await self._call("call_start_batch", req)

    async def call_read(self, req: q.CallReadReq | Req) -> q.CallReadRes:
        return await self._call("call_read", req)

    async def calls_query(self, req: q.CallsQueryReq | Req) -> q.CallsQueryRes:
        return q.CallsQueryRes(calls=[call async for call in self._stream("calls_query", req)])

    def calls_query_stream(self, req: q.CallsQueryReq | Req) -> AsyncIterator[q.CallSchema]:
        return self._stream("calls_query_stream", req)

    async def calls_query_stats(self, req: q.CallsQueryStatsReq | Req) -> q.CallsQueryStatsRes:
        return await self._call("calls_query_stats", req)

    async def calls_delete(self, req: q.CallsDeleteReq | Req) -> q.CallsDeleteRes:
        return await self._call("calls_delete", req)

    async def call_update(self, req: q.CallUpdateReq | Req) -> q.CallUpdateRes:
        return await self._call("call_update", req)

    # -- objects and ops --------------------------------------------------------------------

    async def obj_create(self, req: o.ObjCreateReq | Req) -> o.ObjCreateRes:
        return await self._call("obj_create", req)

    async def obj_read(self, req: o.ObjReadReq | Req) -> o.ObjReadRes:
        return await self._call("obj_read", req)

    async def objs_query(self, req: o.ObjQueryReq | Req) -> o.ObjQueryRes:
        return await self._call("objs_query", req)

    async def obj_delete(self, req: o.ObjDeleteReq | Req) -> o.ObjDeleteRes:
        return await self._call("obj_delete", req)

    async def op_create(self, req: o.OpCreateReq | Req) -> o.OpCreateRes:
        return await self._call("op_create", req)

    async def op_read(self, req: o.OpReadReq | Req) -> o.OpReadRes:
        return await self._call("op_read", req)

    async def ops_query(self, req: o.OpQueryReq | Req) -> o.OpQueryRes:
        return await self._call("ops_query", req)

    # -- tags and aliases of object versions (weave 0.54.0's methods) ----------------------

    async def obj_add_tags(self, req: lb.ObjAddTagsReq | Req) -> lb.LabelsRes:
        return await self._driver.run(_labels.change(self._core, "obj_add_tags", req))

    async def obj_remove_tags(self, req: lb.ObjRemoveTagsReq | Req) -> lb.LabelsRes:
        return await self._driver.run(_labels.change(self._core, "obj_remove_tags", req))

    async def obj_set_aliases(self, req: lb.ObjSetAliasesReq | Req) -> lb.LabelsRes:
        """An alias names one version of an object: setting it on another moves it."""
        return await self._driver.run(_labels.change(self._core, "obj_set_aliases", req))

    async def obj_remove_aliases(self, req: lb.ObjRemoveAliasesReq | Req) -> lb.LabelsRes:
        return await self._driver.run(_labels.change(self._core, "obj_remove_aliases", req))

    async def tags_list(self, req: lb.TagsListReq | Req) -> lb.TagsListRes:
        return await self._driver.run(_labels.names(self._core, "tags_list", req))

    async def aliases_list(self, req: lb.AliasesListReq | Req) -> lb.AliasesListRes:
        return await self._driver.run(_labels.names(self._core, "aliases_list", req))

    # -- tables -----------------------------------------------------------------------------

    async def table_create(self, req: t.TableCreateReq | Req) -> t.TableCreateRes:
        return await self._driver.run(_tables.table_create(self._core, req))

    async def table_update(self, req: t.TableUpdateReq | Req) -> t.TableUpdateRes:
        return await self._driver.run(_tables.table_update(self._core, req))

    async def table_query(self, req: t.TableQueryReq | Req) -> t.TableQueryRes:
        return await self._call("table_query", req)

    def table_query_stream(self, req: t.TableQueryReq | Req) -> AsyncIterator[t.TableRowSchema]:
        async def rows_of_table_query() -> Iterable[t.TableRowSchema]:
            return (await self.table_query(req)).rows

        return self._stream("table_query_stream", req, rows_of_table_query)

    async def table_query_stats(self, req: t.TableQueryStatsReq | Req) -> t.TableQueryStatsRes:
        return await self._call("table_query_stats", req)

    async def table_query_stats_batch(
            self, req: t.TableQueryStatsBatchReq | Req) -> t.TableQueryStatsBatchRes:
        return await self._call("table_query_stats_batch", req)

    # -- refs and files ---------------------------------------------------------------------

    async def refs_read_batch(self, req: r.RefsReadBatchReq | Req) -> r.RefsReadBatchRes:
        return await self._call("refs_read_batch", req)

    async def file_create(self, req: fi.FileCreateReq | Req) -> fi.FileCreateRes:
        return await self._driver.run(self._core.file_create(req))

    async def file_content_read(
            self, req: fi.FileContentReadReq | Req) -> fi.FileContentReadRes:
        return await self._driver.run(self._core.file_content_read(req))

    async def files_stats(self, req: fi.FilesStatsReq | Req) -> fi.FilesStatsRes:
        return await self._call("files_stats", req)

    # -- feedback and costs -----------------------------------------------------------------

    async def feedback_create(self, req: f.FeedbackCreateReq | Req) -> f.FeedbackCreateRes:
        if self._batched is not None:
            return self._batched.feedback_create(req)
        return await self._call("feedback_create", req)

    async def feedback_create_batch(
            self, req: f.FeedbackCreateBatchReq | Req) -> f.FeedbackCreateBatchRes:
        items = coerce(req, f.FeedbackCreateBatchReq).batch
        return f.FeedbackCreateBatchRes(
            res=await self._driver.run(feedback_create_batch(self._core, items)))

    async def feedback_query(self, req: f.FeedbackQueryReq | Req) -> f.FeedbackQueryRes:
        return await self._call("feedback_query", req)

    async def feedback_purge(self, req: f.FeedbackPurgeReq | Req) -> f.FeedbackPurgeRes:
        return await self._call("feedback_purge", req)

    async def feedback_replace(self, req: f.FeedbackReplaceReq | Req) -> f.FeedbackReplaceRes:
        return await self._call("feedback_replace", req)

    async def cost_create(self, req: k.CostCreateReq | Req) -> k.CostCreateRes:
        return await self._call("cost_create", req)

    async def cost_query(self, req: k.CostQueryReq | Req) -> k.CostQueryRes:
        return await self._call("cost_query", req)

    async def cost_purge(self, req: k.CostPurgeReq | Req) -> k.CostPurgeRes:
        return await self._call("cost_purge", req)

    # -- the rest ---------------------------------------------------------------------------

    async def actions_execute_batch(
            self, req: m.ActionsExecuteBatchReq | Req) -> m.ActionsExecuteBatchRes:
        return await self._call("actions_execute_batch", req)

    async def completions_create(
            self, req: m.CompletionsCreateReq | Req) -> m.CompletionsCreateRes:
        return await self._call("completions_create", req)

    def completions_create_stream(
            self, req: m.CompletionsCreateReq | Req) -> AsyncIterator[dict[str, Any]]:
        return self._stream("completions_create_stream", req)

    async def project_stats(self, req: m.ProjectStatsReq | Req) -> m.ProjectStatsRes:
        return await self._call("project_stats", req)

    def threads_query_stream(self, req: m.ThreadsQueryReq | Req) -> AsyncIterator[m.ThreadSchema]:
        return self._stream("threads_query_stream", req)

    async def otel_export(self, req: m.OtelExportReq | Req) -> m.OtelExportRes:
        return await self._driver.run(self._core.otel_export(req))

    async def server_info(self) -> q.ServerInfoRes:
        return await self._driver.run(self._core.server_info())

    async def ensure_project_exists(self, entity: str, project: str) -> m.EnsureProjectExistsRes:
        return await self._driver.run(self._core.ensure_project_exists(entity, project))
