"""``RemoteHTTPTraceServer``: every method of the seed, blocking, over ``http.client``.

Each method is a one-liner over a shared plan (``_core``, ``_tables``, ``_feedback``) run
by :class:`~engine.client._http.SyncDriver`; see ``_http`` for why ``http.client``.
Methods take the request Struct or a dict and return the response Struct; streaming
methods are generators that decode JSONL lines as they arrive.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from engine.client import _labels, _tables
from engine.client._base import ClientBase
from engine.client._core import coerce
from engine.client._feedback import feedback_create_batch
from engine.client._http import SyncDriver
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

__all__ = ["RemoteHTTPTraceServer"]

Req = dict[str, Any]


class RemoteHTTPTraceServer(ClientBase):
    """A blocking client of a Weave trace server (``engine serve`` or the hosted one).

        server = RemoteHTTPTraceServer("http://127.0.0.1:6345")
        server.obj_create({"obj": {"project_id": "me/p", "object_id": "o", "val": {"a": 1}}})

    Safe to share between threads; usable in forked children (connections are per pid).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._driver = SyncDriver(self._core, self._retry, self._timeout_s)

    def close(self) -> None:
        """Deliver what batched mode queued, then drop pooled connections."""
        if self._batched is not None:
            self._batched.close()
        self._driver.transport.close()

    def __enter__(self) -> RemoteHTTPTraceServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, name: str, req: Any) -> Any:
        return self._driver.run(self._core.call(name, req))

    def _stream(self, name: str, req: Any, on_404: Any = None) -> Iterator[Any]:
        request = self._core.json_request(name, coerce(req, ROUTES[name].req))
        return self._driver.stream(name, request, on_404)

    # -- calls ------------------------------------------------------------------------------

    def call_start(self, req: c.CallStartReq | Req) -> c.CallStartRes:
        if self._batched is not None:
            return self._batched.call_start(req)
        return self._call("call_start", req)

    def call_end(self, req: c.CallEndReq | Req) -> c.CallEndRes:
        if self._batched is not None:
            return self._batched.call_end(req)
        return self._call("call_end", req)

    def call_start_batch(self, req: c.CallCreateBatchReq | Req) -> c.CallCreateBatchRes:
        if self._batched is not None:
            return self._batched.call_start_batch(req)
        return self._call("call_start_batch", req)

    def call_read(self, req: q.CallReadReq | Req) -> q.CallReadRes:
        return self._call("call_read", req)

    def calls_query(self, req: q.CallsQueryReq | Req) -> q.CallsQueryRes:
        return q.CallsQueryRes(calls=list(self._stream("calls_query", req)))

    def calls_query_stream(self, req: q.CallsQueryReq | Req) -> Iterator[q.CallSchema]:
        return self._stream("calls_query_stream", req)

    def calls_query_stats(self, req: q.CallsQueryStatsReq | Req) -> q.CallsQueryStatsRes:
        return self._call("calls_query_stats", req)

    def calls_delete(self, req: q.CallsDeleteReq | Req) -> q.CallsDeleteRes:
        return self._call("calls_delete", req)

    def call_update(self, req: q.CallUpdateReq | Req) -> q.CallUpdateRes:
        return self._call("call_update", req)

    # -- objects and ops --------------------------------------------------------------------

    def obj_create(self, req: o.ObjCreateReq | Req) -> o.ObjCreateRes:
        return self._call("obj_create", req)

    def obj_read(self, req: o.ObjReadReq | Req) -> o.ObjReadRes:
        return self._call("obj_read", req)

    def objs_query(self, req: o.ObjQueryReq | Req) -> o.ObjQueryRes:
        return self._call("objs_query", req)

    def obj_delete(self, req: o.ObjDeleteReq | Req) -> o.ObjDeleteRes:
        return self._call("obj_delete", req)

    def op_create(self, req: o.OpCreateReq | Req) -> o.OpCreateRes:
        return self._call("op_create", req)

    def op_read(self, req: o.OpReadReq | Req) -> o.OpReadRes:
        return self._call("op_read", req)

    def ops_query(self, req: o.OpQueryReq | Req) -> o.OpQueryRes:
        return self._call("ops_query", req)

    # -- tags and aliases of object versions (weave 0.54.0's methods) ----------------------

    def obj_add_tags(self, req: lb.ObjAddTagsReq | Req) -> lb.LabelsRes:
        return self._driver.run(_labels.change(self._core, "obj_add_tags", req))

    def obj_remove_tags(self, req: lb.ObjRemoveTagsReq | Req) -> lb.LabelsRes:
        return self._driver.run(_labels.change(self._core, "obj_remove_tags", req))

    def obj_set_aliases(self, req: lb.ObjSetAliasesReq | Req) -> lb.LabelsRes:
        """An alias names one version of an object: setting it on another moves it."""
        return self._driver.run(_labels.change(self._core, "obj_set_aliases", req))

    def obj_remove_aliases(self, req: lb.ObjRemoveAliasesReq | Req) -> lb.LabelsRes:
        return self._driver.run(_labels.change(self._core, "obj_remove_aliases", req))

    def tags_list(self, req: lb.TagsListReq | Req) -> lb.TagsListRes:
        return self._driver.run(_labels.names(self._core, "tags_list", req))

    def aliases_list(self, req: lb.AliasesListReq | Req) -> lb.AliasesListRes:
        return self._driver.run(_labels.names(self._core, "aliases_list", req))

    # -- tables -----------------------------------------------------------------------------

    def table_create(self, req: t.TableCreateReq | Req) -> t.TableCreateRes:
        """Over ``remote_request_bytes_limit``: an empty create, then split appends."""
        return self._driver.run(_tables.table_create(self._core, req))

    def table_update(self, req: t.TableUpdateReq | Req) -> t.TableUpdateRes:
        """Over ``remote_request_bytes_limit``: halves applied in sequence, recursively."""
        return self._driver.run(_tables.table_update(self._core, req))

    def table_query(self, req: t.TableQueryReq | Req) -> t.TableQueryRes:
        return self._call("table_query", req)

    def table_query_stream(self, req: t.TableQueryReq | Req) -> Iterator[t.TableRowSchema]:
        """Streams ``/table/query_stream``; a server without it (404) answers table_query."""
        return self._stream("table_query_stream", req, lambda: self.table_query(req).rows)

    def table_query_stats(self, req: t.TableQueryStatsReq | Req) -> t.TableQueryStatsRes:
        return self._call("table_query_stats", req)

    def table_query_stats_batch(
            self, req: t.TableQueryStatsBatchReq | Req) -> t.TableQueryStatsBatchRes:
        return self._call("table_query_stats_batch", req)

    # -- refs and files ---------------------------------------------------------------------

    def refs_read_batch(self, req: r.RefsReadBatchReq | Req) -> r.RefsReadBatchRes:
        return self._call("refs_read_batch", req)

    def file_create(self, req: fi.FileCreateReq | Req) -> fi.FileCreateRes:
        return self._driver.run(self._core.file_create(req))

    def file_content_read(self, req: fi.FileContentReadReq | Req) -> fi.FileContentReadRes:
        return self._driver.run(self._core.file_content_read(req))

    def files_stats(self, req: fi.FilesStatsReq | Req) -> fi.FilesStatsRes:
        return self._call("files_stats", req)

    # -- feedback and costs -----------------------------------------------------------------

    def feedback_create(self, req: f.FeedbackCreateReq | Req) -> f.FeedbackCreateRes:
        """Batched mode: queued and sent by ``/feedback/batch/create``; answers at once."""
        if self._batched is not None:
            return self._batched.feedback_create(req)
        return self._call("feedback_create", req)

    def feedback_create_batch(self, req: f.FeedbackCreateBatchReq | Req) -> f.FeedbackCreateBatchRes:
        """Several feedback rows in one request (weave 0.54.0's method); a server without
        ``/feedback/batch/create`` gets them one by one."""
        items = coerce(req, f.FeedbackCreateBatchReq).batch
        return f.FeedbackCreateBatchRes(res=self._driver.run(feedback_create_batch(self._core, items)))

    def feedback_query(self, req: f.FeedbackQueryReq | Req) -> f.FeedbackQueryRes:
        return self._call("feedback_query", req)

    def feedback_purge(self, req: f.FeedbackPurgeReq | Req) -> f.FeedbackPurgeRes:
        return self._call("feedback_purge", req)

    def feedback_replace(self, req: f.FeedbackReplaceReq | Req) -> f.FeedbackReplaceRes:
        return self._call("feedback_replace", req)

    def cost_create(self, req: k.CostCreateReq | Req) -> k.CostCreateRes:
        return self._call("cost_create", req)

    def cost_query(self, req: k.CostQueryReq | Req) -> k.CostQueryRes:
        return self._call("cost_query", req)

    def cost_purge(self, req: k.CostPurgeReq | Req) -> k.CostPurgeRes:
        return self._call("cost_purge", req)

    # -- the rest ---------------------------------------------------------------------------

    def actions_execute_batch(
            self, req: m.ActionsExecuteBatchReq | Req) -> m.ActionsExecuteBatchRes:
        return self._call("actions_execute_batch", req)

    def completions_create(self, req: m.CompletionsCreateReq | Req) -> m.CompletionsCreateRes:
        return self._call("completions_create", req)

    def completions_create_stream(
            self, req: m.CompletionsCreateReq | Req) -> Iterator[dict[str, Any]]:
        return self._stream("completions_create_stream", req)

    def project_stats(self, req: m.ProjectStatsReq | Req) -> m.ProjectStatsRes:
        return self._call("project_stats", req)

    def threads_query_stream(self, req: m.ThreadsQueryReq | Req) -> Iterator[m.ThreadSchema]:
        return self._stream("threads_query_stream", req)

    def otel_export(self, req: m.OtelExportReq | Req) -> m.OtelExportRes:
        """``traces`` as protobuf bytes or as OTLP JSON; ``project_id`` goes in a header."""
        return self._driver.run(self._core.otel_export(req))

    def server_info(self) -> q.ServerInfoRes:
        return self._driver.run(self._core.server_info())

    def ensure_project_exists(self, entity: str, project: str) -> m.EnsureProjectExistsRes:
        """``upsertModel`` through the W&B GraphQL API at ``wandb_base_url``."""
        return self._driver.run(self._core.ensure_project_exists(entity, project))
