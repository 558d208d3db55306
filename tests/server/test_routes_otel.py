"""Project stats, threads, OTLP export, actions and echo completions against ``engine serve``."""

import msgspec

from tests.server.harness import PROJECT, complete, end, serving, start, upsert_batch

SPAN = {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
        "name": "llm.call", "startTimeUnixNano": "1700000000000000000",
        "endTimeUnixNano": "1700000001000000000",
        "attributes": [{"key": "model", "value": {"stringValue": "gpt-x"}}]}  # fmt: skip
CHAT = {"project_id": PROJECT, "inputs": {"model": "echo", "messages": [
    {"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there world"}]}}  # fmt: skip


def test_threads_aggregate_turn_calls_and_project_stats_count_bytes(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            calls = [complete(f"t{i}", thread_id="th", turn_id=f"t{i}", t_s=i) for i in range(3)]
            calls.append(complete("other", thread_id="th2", turn_id="other", t_s=10))
            assert (await api.post("/v2/ent/proj/calls/complete", {"batch": calls}))[0] == 200
            body = {
                "project_id": PROJECT,
                "sort_by": [{"field": "turn_count", "direction": "desc"}],
            }
            async with api.session.post(api.url + "/threads/stream_query", json=body) as resp:
                assert resp.content_type == "application/jsonl"
                threads = [msgspec.json.decode(line) for line in (await resp.read()).splitlines()]
            assert [(t["thread_id"], t["turn_count"]) for t in threads] == [("th", 3), ("th2", 1)]
            assert threads[0]["first_turn_id"] == "t0" and threads[0]["last_turn_id"] == "t2"
            assert threads[0]["p50_turn_duration_ms"] == 1000.0
            _, stats = await api.post("/project/stats", {"project_id": PROJECT})
            assert stats["trace_storage_size_bytes"] > 0 and stats["files_storage_size_bytes"] == 0
            bad = {**body, "sort_by": [{"field": "nope", "direction": "asc"}]}
            assert (await api.post("/threads/stream_query", bad))[0] == 422

    run(scenario())


def test_otel_export_json_and_protobuf_store_spans_as_calls(run, db_path):
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    async def scenario():
        async with serving(db_path) as api:
            doc = {"resourceSpans": [{"scopeSpans": [{"spans": [SPAN]}]}]}
            headers = {"project_id": PROJECT, "Content-Type": "application/json"}
            for _ in range(2):  # a resent export rewrites the same call
                assert (await api.post("/otel/v1/traces", doc, headers))[0] == 200
            message = trace_service_pb2.ExportTraceServiceRequest()
            span = message.resource_spans.add().scope_spans.add().spans.add()
            span.trace_id, span.span_id, span.name = (
                bytes(16),
                bytes.fromhex("00000000000000aa"),
                "pb",
            )
            span.start_time_unix_nano, span.end_time_unix_nano = 1, 2_000_000
            pb = {"project_id": PROJECT, "Content-Type": "application/x-protobuf"}
            assert (await api.post("/otel/v1/traces", message.SerializeToString(), pb))[0] == 200
            calls = {c["id"]: c for c in await api.query()}
            assert set(calls) == {"eee19b7ec3c1b174", "00000000000000aa"}
            attributes = calls["eee19b7ec3c1b174"]["attributes"]
            # the span itself reads back as attributes.otel_span, as weave's server answers
            assert attributes == {"model": "gpt-x", "otel_span": SPAN}
            assert (await api.post("/otel/v1/traces", b"\xff\x00", pb))[0] == 400
            assert (await api.post("/otel/v1/traces", doc, {"Content-Type": "application/json"}))[
                0
            ] == 422
            text = {"project_id": PROJECT, "Content-Type": "text/plain"}
            assert (await api.post("/otel/v1/traces", b"x", text))[0] == 415

    run(scenario())


def _action(name, config):
    bases = ["Object", "BaseModel"]
    return {"obj": {"project_id": PROJECT, "object_id": name, "val": {
        "_type": "ActionSpec", "_class_name": "ActionSpec", "_bases": bases,
        "name": name, "config": config}}}  # fmt: skip


def test_actions_execute_batch_runs_contains_words_into_feedback(run, db_path):
    words = {"action_type": "contains_words", "target_words": ["a-c1", "nowhere"]}
    judge = {"action_type": "llm_judge", "model": "gpt-4o", "prompt": "?", "response_schema": {}}

    async def scenario():
        async with serving(db_path) as api:
            items = [(m, f(c)) for c in ("c1", "c2") for m, f in (("start", start), ("end", end))]
            await api.post("/call/upsert_batch", upsert_batch(*items))
            _, made = await api.post("/obj/create", _action("has_a", words))
            action = f"weave:///{PROJECT}/object/has_a:{made['digest']}"
            body = {"project_id": PROJECT, "action_ref": action, "call_ids": ["c1", "c2"]}
            assert await api.post("/actions/execute_batch", body) == (200, {})
            _, found = await api.post("/feedback/query", {"project_id": PROJECT})
            status, res = await api.post("/actions/execute_batch", {**body, "call_ids": ["zz"]})
            assert status == 404 and "zz" in res["reason"]
            gone = {**body, "action_ref": f"weave:///{PROJECT}/object/none:latest"}
            assert (await api.post("/actions/execute_batch", gone))[0] == 404
            _, made = await api.post("/obj/create", _action("judge", judge))
            llm = {**body, "action_ref": f"weave:///{PROJECT}/object/judge:{made['digest']}"}
            refused = await api.post("/actions/execute_batch", llm)
            _, after = await api.post("/feedback/query", {"project_id": PROJECT})
            return found["result"], refused, after["total_count"]

    feedback, (status, refused), count_after = run(scenario())
    outputs = {f["weave_ref"].rsplit("/", 1)[1]: f["payload"]["output"] for f in feedback}
    assert outputs == {"c1": True, "c2": False}
    assert {f["feedback_type"] for f in feedback} == {"wandb.runnable.has_a"}
    assert status == 422 and "'llm_judge'" in refused["reason"] and count_after == 2


def test_completions_echo_deterministically_and_stream_chunks(run, db_path):
    async def scenario():
        async with serving(db_path) as api:
            status, first = await api.post("/completions/create", CHAT)
            assert status == 200
            assert first["response"]["choices"][0]["message"]["content"] == "hello there world"
            _, second = await api.post("/completions/create", CHAT)
            assert (
                second["response"] == first["response"]
                and second["weave_call_id"] != first["weave_call_id"]
            )
            async with api.session.post(api.url + "/completions/create_stream", json=CHAT) as resp:
                assert resp.content_type == "application/jsonl"
                lines = [msgspec.json.decode(line) async for line in resp.content if line.strip()]
            assert "weave_call_id" in lines[0]["_meta"]
            text = "".join(c["choices"][0]["delta"].get("content", "") for c in lines[1:])
            assert (
                text == "hello there world" and lines[-1]["choices"][0]["finish_reason"] == "stop"
            )
            untracked = {**CHAT, "track_llm_call": False}
            assert (await api.post("/completions/create", untracked))[1].get(
                "weave_call_id"
            ) is None
            assert len(await api.query()) == 3  # two creates and one stream were tracked
            empty = {**CHAT, "inputs": {"model": ""}}
            assert (await api.post("/completions/create", empty))[0] == 422

    run(scenario())
