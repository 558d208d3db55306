"""Shared bits of the engine integration tests: a traced workload and an Engine factory."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import engine
from engine.producer._engine import Engine

PROJECT = "test-entity/test-project"


def make_engine(url: str, tmp_path: Any, **overrides: Any) -> Engine:
    settings: dict[str, Any] = dict(
        project=PROJECT,
        compression="none",
        ring_bytes=1 << 20,
        max_slots=16,
        linger_ms=5,
        delivery_deadline_s=30.0,
        backoff_initial_ms=10,
        backoff_max_ms=200,
        shutdown_timeout_s=20.0,
        dead_letter_path=str(tmp_path / "dead_letters.jsonl"),
    )
    settings.update(overrides)
    return Engine(url=url, **settings)


def trace_calls(tracer: Any, count: int, *, prefix: str = "call", payload_bytes: int = 200) -> list[str]:
    """``count`` root calls, each with one child; returns the ids of every call made."""
    ids = []
    filler = "x" * payload_bytes
    for i in range(count):
        with tracer.call(f"{prefix}.root", inputs={"i": i, "text": filler}) as root:
            with tracer.call(f"{prefix}.child", inputs={"i": i}) as child:
                child.output = {"n": i, "pid": os.getpid()}
            root.output = i
            ids += [root.id, child.id]
    return ids


def trace_structs(tracer: Any, count: int, *, prefix: str = "call",
                  payload_bytes: int = 200) -> list[str]:
    """``count`` calls through ``call_start`` / ``call_end`` with the wire Structs (the C
    one-call path where it is built), as an eval loop of the low-level API writes them."""
    from engine.wire import EndedCallSchemaForInsert, StartedCallSchemaForInsert, utcnow, uuid7

    ids = []
    filler = "x" * payload_bytes
    for i in range(count):
        call_id, trace_id, started_at = uuid7(), uuid7(), utcnow()
        answer = tracer.call_start(StartedCallSchemaForInsert(
            project_id=PROJECT, id=call_id, trace_id=trace_id, op_name=f"{prefix}.op",
            started_at=started_at, attributes={"i": i}, inputs={"i": i, "text": filler}))
        assert (answer.id, answer.trace_id) == (call_id, trace_id)
        tracer.call_end(EndedCallSchemaForInsert(
            project_id=PROJECT, id=call_id, trace_id=trace_id, started_at=started_at,
            ended_at=utcnow(), output={"n": i, "pid": os.getpid()}, summary={}))
        ids.append(call_id)
    return ids


async def sliding_open_calls(tracer: Any, calls: int, open_calls: int, *, prompt_bytes: int = 300,
                             for_s: float | None = None, ids: list[str] | None = None) -> int:
    """Up to ``calls`` async op calls, ``open_calls`` open at any time, ended oldest first
    (for at most ``for_s`` seconds, if given); returns how many were made (their call ids
    appended to ``ids``, if given)."""
    loop = asyncio.get_running_loop()
    gates: dict[int, asyncio.Future] = {}

    @tracer.op
    async def predict(example: int, prompt: str) -> int:
        if ids is not None:
            ids.append(engine.current_call().id)
        await gates[example]
        return example

    stop = None if for_s is None else time.monotonic() + for_s
    running: list[tuple[int, asyncio.Task]] = []
    made = 0
    while made < calls and (stop is None or time.monotonic() < stop):
        gates[made] = loop.create_future()
        running.append((made, loop.create_task(predict(made, "p" * prompt_bytes))))
        made += 1
        await asyncio.sleep(0)  # the task runs to its gate: its call is open
        if len(running) >= open_calls:
            oldest, task = running.pop(0)
            gates.pop(oldest).set_result(None)
            await task
    for example, task in running:
        gates.pop(example).set_result(None)
        await task
    return made


def chaos_seeds(variable: str, default: tuple[int, ...]) -> list[int]:
    """The seeds a chaos test runs: ``default``, or those ``variable`` names (``N``: 0..N-1,
    ``A-B``: A..B-1)."""
    wanted = os.environ.get(variable, "").strip()
    if not wanted:
        return list(default)
    first, _, last = wanted.partition("-")
    return list(range(int(first), int(last))) if last else list(range(int(first)))
