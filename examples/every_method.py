"""Call every method of the seed's RemoteHTTPTraceServer against a running trace server.

    engine serve --port 6345 &
    python examples/every_method.py http://127.0.0.1:6345

Prints one line per method: its name and the typed answer (abridged). Exits 1 if any
method failed, naming it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import uuid
from collections.abc import Callable
from typing import Any

import engine
from engine.wire import uuid7

ENTITY = "examples"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _abridged(value: Any, width: int = 110) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


class Tour:
    """Runs the methods in an order where each one has something to work on."""

    def __init__(self, url: str) -> None:
        self.project = f"{ENTITY}/every-method-{uuid.uuid4().hex[:8]}"
        self.server = engine.RemoteHTTPTraceServer(url)
        self.batched = engine.RemoteHTTPTraceServer(url, should_batch=True)
        self.failed: list[str] = []

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        try:
            answer = fn()
        except Exception as exc:  # report every method, not just the first failure
            self.failed.append(name)
            print(f"{name:26} FAILED {type(exc).__name__}: {exc}")
            return None
        print(f"{name:26} {_abridged(answer)}")
        return answer

    def run(self) -> int:
        p, s = self.project, self.server
        self.step("server_info", s.server_info)
        self.step("ensure_project_exists", lambda: s.ensure_project_exists(ENTITY, p.split("/")[1]))
        self.step("set_auth", lambda: s.set_auth(("api", "unused-by-an-open-server")))
        self.step("from_env", lambda: type(s).from_env())
        call_id, trace_id = uuid7(), uuid7()
        start = {"project_id": p, "id": call_id, "trace_id": trace_id, "op_name": "predict",
                 "started_at": _now(), "attributes": {}, "inputs": {"q": "2+2"},
                 "thread_id": "thread-1", "turn_id": call_id}
        self.step("call_start", lambda: s.call_start({"start": start}))
        self.step("call_end", lambda: s.call_end({"end": {
            "project_id": p, "id": call_id, "ended_at": _now(), "output": 4, "summary": {}}}))
        other = {**start, "id": uuid7(), "trace_id": uuid7()}
        self.step("call_start_batch", lambda: s.call_start_batch({"batch": [
            {"mode": "start", "req": {"start": other}},
            {"mode": "end", "req": {"end": {"project_id": p, "id": other["id"],
                                            "ended_at": _now(), "summary": {}}}}]}))
        self.step("call_read", lambda: s.call_read({"project_id": p, "id": call_id}))
        self.step("calls_query", lambda: s.calls_query({"project_id": p}))
        self.step("calls_query_stream", lambda: list(s.calls_query_stream({"project_id": p})))
        self.step("calls_query_stats", lambda: s.calls_query_stats({"project_id": p}))
        self.step("call_update", lambda: s.call_update(
            {"project_id": p, "call_id": call_id, "display_name": "renamed"}))
        self.step("calls_delete", lambda: s.calls_delete(
            {"project_id": p, "call_ids": [other["id"]]}))
        self.objects_and_tables()
        self.files_feedback_costs(call_id)
        self.the_rest(call_id)
        self.batched_path()
        self.server.close()
        self.batched.close()
        if self.failed:
            print(f"FAILED: {', '.join(self.failed)}")
            return 1
        print("every method answered")
        return 0

    def objects_and_tables(self) -> None:
        p, s = self.project, self.server
        obj = self.step("obj_create", lambda: s.obj_create(
            {"obj": {"project_id": p, "object_id": "config", "val": {"temperature": 0.2}}}))
        self.step("obj_read", lambda: s.obj_read(
            {"project_id": p, "object_id": "config", "digest": "latest"}))
        self.step("objs_query", lambda: s.objs_query({"project_id": p}))
        self.step("refs_read_batch", lambda: s.refs_read_batch(
            {"refs": [f"weave:///{p}/object/config:{obj.digest if obj else 'latest'}"]}))
        op = self.step("op_create", lambda: s.op_create({"op_obj": {
            "project_id": p, "object_id": "predict", "val": {"_type": "Op", "code": "def f(): ..."}}}))
        self.step("op_read", lambda: s.op_read(
            {"project_id": p, "name": "predict", "digest": op.digest if op else "latest"}))
        self.step("ops_query", lambda: s.ops_query({"project_id": p}))
        table = self.step("table_create", lambda: s.table_create(
            {"table": {"project_id": p, "rows": [{"q": i} for i in range(3)]}}))
        digest = table.digest if table else "missing"
        updated = self.step("table_update", lambda: s.table_update(
            {"project_id": p, "base_digest": digest, "updates": [{"append": {"row": {"q": 3}}}]}))
        digest = updated.digest if updated else digest
        self.step("table_query", lambda: s.table_query({"project_id": p, "digest": digest}))
        self.step("table_query_stream", lambda: list(
            s.table_query_stream({"project_id": p, "digest": digest})))
        self.step("table_query_stats", lambda: s.table_query_stats(
            {"project_id": p, "digest": digest}))
        self.step("table_query_stats_batch", lambda: s.table_query_stats_batch(
            {"project_id": p, "digests": [digest]}))
        self.step("obj_delete", lambda: s.obj_delete({"project_id": p, "object_id": "config"}))

    def files_feedback_costs(self, call_id: str) -> None:
        p, s = self.project, self.server
        made = self.step("file_create", lambda: s.file_create(
            {"project_id": p, "name": "notes.txt", "content": b"hello"}))
        self.step("file_content_read", lambda: s.file_content_read(
            {"project_id": p, "digest": made.digest if made else "missing"}))
        self.step("files_stats", lambda: s.files_stats({"project_id": p}))
        ref = f"weave:///{p}/call/{call_id}"
        note = {"project_id": p, "weave_ref": ref, "feedback_type": "note",
                "payload": {"note": "good"}}
        fb = self.step("feedback_create", lambda: s.feedback_create(note))
        self.step("feedback_query", lambda: s.feedback_query({"project_id": p}))
        fb2 = self.step("feedback_replace", lambda: s.feedback_replace(
            {**note, "payload": {"note": "better"}, "feedback_id": fb.id if fb else "missing"}))
        self.step("feedback_purge", lambda: s.feedback_purge({"project_id": p, "query": {
            "$expr": {"$eq": [{"$getField": "id"}, {"$literal": fb2.id if fb2 else ""}]}}}))
        costs = self.step("cost_create", lambda: s.cost_create({"project_id": p, "costs": {
            "my-llm": {"prompt_token_cost": 1e-6, "completion_token_cost": 2e-6}}}))
        self.step("cost_query", lambda: s.cost_query({"project_id": p}))
        cost_id = costs.ids[0][0] if costs else ""  # [id, llm_id], as weave answers
        self.step("cost_purge", lambda: s.cost_purge({"project_id": p, "query": {
            "$expr": {"$eq": [{"$getField": "id"}, {"$literal": cost_id}]}}}))

    def the_rest(self, call_id: str) -> None:
        p, s = self.project, self.server
        self.step("project_stats", lambda: s.project_stats({"project_id": p}))
        self.step("threads_query_stream", lambda: list(
            s.threads_query_stream({"project_id": p})))
        span = {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
                "name": "otel-op", "startTimeUnixNano": "1700000000000000000",
                "endTimeUnixNano": "1700000001000000000"}
        self.step("otel_export", lambda: s.otel_export({"project_id": p, "traces": {
            "resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}}))
        scorer = self.step("obj_create (an action)", lambda: s.obj_create({"obj": {
            "project_id": p, "object_id": "scorer",
            "val": {"name": "scorer", "config": {"action_type": "contains_words",
                                                 "target_words": ["4"]}}}}))
        self.step("actions_execute_batch", lambda: s.actions_execute_batch({
            "project_id": p, "call_ids": [call_id],
            "action_ref": f"weave:///{p}/object/scorer:{scorer.digest if scorer else 'latest'}"}))
        ask = {"project_id": p, "track_llm_call": False,
               "inputs": {"model": "echo", "messages": [{"role": "user", "content": "ping"}]}}
        self.step("completions_create", lambda: s.completions_create(ask))
        self.step("completions_create_stream", lambda: list(s.completions_create_stream(ask)))

    def batched_path(self) -> None:
        b, p = self.batched, self.project
        started = b.call_start({"start": {"project_id": p, "op_name": "batched", "started_at": _now(),
                                          "attributes": {}, "inputs": {}}})
        b.call_end({"end": {"project_id": p, "id": started.id, "ended_at": _now(), "summary": {}}})
        self.step("feedback_create (batched)", lambda: b.feedback_create({
            "project_id": p, "weave_ref": f"weave:///{p}/call/{started.id}",
            "feedback_type": "note", "payload": {"note": "queued"}}))
        processor = self.step("get_call_processor", b.get_call_processor)
        if processor is not None and not processor.flush(30):
            self.failed.append("get_call_processor")
            print("get_call_processor          FAILED: flush timed out")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="trace server URL, e.g. http://127.0.0.1:6345")
    return Tour(parser.parse_args(argv).url).run()


if __name__ == "__main__":
    sys.exit(main())
