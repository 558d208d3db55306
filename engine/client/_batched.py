"""The ``should_batch=True`` ingest path: calls go through an :class:`engine.Engine`.

``call_start`` / ``call_end`` / ``call_start_batch`` encode into the shared-memory ring and
return at once; the Engine's sender process delivers. The Engine is created lazily on the
first call, with the first ``project_id`` seen as its default project (each item still
carries its own ``project_id``). Ids are made client-side, as weave does, so
``call_start`` can answer ``CallStartRes(id, trace_id)`` before anything is sent.

Fork: a Tracer is fork-safe, so an Engine made in a parent keeps working in forked
children. A child that makes the first call owns its own Engine and must
``get_call_processor().flush()`` before ``os._exit`` (no atexit hook runs there).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import msgspec

from engine.client._core import coerce
from engine.client._feedback import FeedbackBatcher
from engine.producer._engine import Engine
from engine.producer._tracer import Tracer
from engine.wire import _codec
from engine.wire.calls import (
    CallCreateBatchReq,
    CallCreateBatchRes,
    CallEndReq,
    CallEndRes,
    CallStartReq,
    CallStartRes,
    StartBatchItem,
)
from engine.wire.feedback import FeedbackCreateReq, FeedbackCreateRes

__all__ = ["BatchedIngest", "CallProcessor"]


class BatchedIngest:
    def __init__(self, trace_server_url: str, feedback: FeedbackBatcher,
                 engine_options: dict[str, Any]) -> None:
        self._url = trace_server_url
        self._options = engine_options
        self.feedback = feedback
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._tracer: Tracer | None = None

    def set_api_key(self, api_key: str) -> None:
        """Applies to an Engine made after this call (a running sender keeps its key)."""
        self._options = {**self._options, "api_key": api_key}

    def tracer(self, project_id: str) -> Tracer:
        tracer = self._tracer
        if tracer is not None:
            return tracer
        with self._lock:
            if self._tracer is None:
                self._engine = Engine(url=self._url, project=project_id, **self._options)
                self._tracer = self._engine.producer()
            return self._tracer

    def call_start(self, req: Any) -> CallStartRes:
        start = coerce(req, CallStartReq).start
        return self.tracer(start.project_id).call_start(start)

    def call_end(self, req: Any) -> CallEndRes:
        end = coerce(req, CallEndReq).end
        self.tracer(end.project_id).call_end(end)
        return CallEndRes()

    def call_start_batch(self, req: Any) -> CallCreateBatchRes:
        results: list[dict[str, Any]] = []
        for item in coerce(req, CallCreateBatchReq).batch:
            if isinstance(item, StartBatchItem):
                started = self.call_start(item.req)
                results.append({"id": started.id, "trace_id": started.trace_id})
            else:
                self.call_end(item.req)
                results.append({})
        return CallCreateBatchRes(res=results)

    def feedback_create(self, req: Any) -> FeedbackCreateRes:
        item = coerce(req, FeedbackCreateReq)
        if item.id is None:
            item = msgspec.structs.replace(item, id=_codec.uuid7())
        self.feedback.submit(item)
        return FeedbackCreateRes(id=item.id, created_at=_codec.utcnow(),
                                 wb_user_id=item.wb_user_id or "", payload=item.payload)

    def flush(self, timeout_s: float) -> bool:
        """Calls enqueued by this process (all processes, in the Engine's owner) and queued
        feedback, delivered within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        calls_done = True
        engine, tracer = self._engine, self._tracer
        if engine is not None and tracer is not None:
            owner = os.getpid() == engine._owner_pid
            calls_done = engine.flush(timeout_s) if owner else tracer.flush(timeout_s)
        remaining_s = max(0.0, deadline - time.monotonic())
        return self.feedback.flush(remaining_s) and calls_done

    def stats(self) -> dict[str, Any]:
        engine = self._engine
        calls = engine.stats() if engine is not None else {}
        return {"calls": calls, "feedback": self.feedback.stats()}

    def close(self, timeout_s: float | None = None) -> None:
        self.feedback.flush(30.0 if timeout_s is None else timeout_s)
        engine = self._engine
        if engine is not None:
            engine.close(timeout_s)


class CallProcessor:
    """What ``get_call_processor()`` returns in batched mode: ``flush`` and ``stats``."""

    def __init__(self, ingest: BatchedIngest) -> None:
        self._ingest = ingest

    def flush(self, timeout_s: float = 30.0) -> bool:
        """True once everything enqueued so far was acknowledged, within ``timeout_s``."""
        return self._ingest.flush(timeout_s)

    def stats(self) -> dict[str, Any]:
        return self._ingest.stats()
