"""The owner that ``tests/engine/test_process_chaos.py`` runs, stops, kills and recovers.

``python -m tests.engine.process_chaos_owner JSON`` makes one :class:`engine.Engine` with
the settings given, starts one producer process per program (``multiprocessing``, with the
start method given) and prints one JSON line: its pid, the ring set, the senders' settings
file (a sender's command line names it), the producers' pids. Each producer runs its
program (nested ``tracer.call`` blocks, ``@tracer.op`` functions, ``call_start`` /
``call_end``, async ops open across each other, a call open across the whole program) and,
once a call's block or op returned, appends ``<call id> <i> <data bytes>`` to
``<work>/ids/<pid>.ids`` with one unbuffered write (kept through the process's SIGKILL: the
calls the engine promised to keep). An exception raised into the program is written to
``<work>/errors/<pid>.txt``; a program that ran to its end writes ``<work>/done/<pid>``.

Once every producer ended it prints ``{"exitcodes": {pid: code}}``, then waits for a line on
stdin before ``close()`` (the test ends its faults first), and prints close()'s stats.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import sys
import time
import traceback
from typing import Any

import engine
from engine.wire import EndedCallSchemaForInsert, StartedCallSchemaForInsert, utcnow, uuid7


class _Calls:
    """The program's calls: a sequence number each (its inputs' and output's ``i``), and the
    record of those whose block returned."""

    def __init__(self, work: str, project: str) -> None:
        self.project = project
        self._fd = os.open(os.path.join(work, "ids", f"{os.getpid()}.ids"),
                           os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._i = 0

    def next(self) -> int:
        self._i += 1
        return self._i

    def returned(self, call_id: str, i: int, data: str) -> None:
        os.write(self._fd, f"{call_id} {i} {len(data)}\n".encode())


def _nested(tracer: Any, calls: _Calls, roots: int, children: int, data: str) -> None:
    for _ in range(roots):
        i = calls.next()
        with tracer.call("chaos.root", inputs={"i": i, "data": data}) as root:
            for _ in range(children):
                j = calls.next()
                with tracer.call("chaos.child", inputs={"i": j, "data": data}) as child:
                    child.output = {"i": j}
                calls.returned(child.id, j, data)
            root.output = {"i": i}
        calls.returned(root.id, i, data)


def _ops(tracer: Any, calls: _Calls, count: int, data: str) -> None:
    returned: list[tuple[str, int]] = []

    @tracer.op
    def leaf(i: int, data: str) -> dict:
        returned.append((engine.current_call().id, i))
        return {"i": i}

    @tracer.op
    def parent(i: int, data: str) -> dict:
        leaf(calls.next(), data)
        _record(calls, returned.pop(), data)  # its op returned
        returned.append((engine.current_call().id, i))
        return {"i": i}

    for _ in range(count):
        parent(calls.next(), data)
        _record(calls, returned.pop(), data)


def _record(calls: _Calls, returned: tuple[str, int], data: str) -> None:
    calls.returned(returned[0], returned[1], data)


def _structs(tracer: Any, calls: _Calls, count: int, data: str) -> None:
    for _ in range(count):
        i = calls.next()
        call_id, trace_id, started_at = uuid7(), uuid7(), utcnow()
        tracer.call_start(StartedCallSchemaForInsert(
            project_id=calls.project, id=call_id, trace_id=trace_id, op_name="chaos.struct",
            started_at=started_at, attributes={}, inputs={"i": i, "data": data}))
        tracer.call_end(EndedCallSchemaForInsert(
            project_id=calls.project, id=call_id, trace_id=trace_id, started_at=started_at,
            ended_at=utcnow(), output={"i": i}, summary={}))
        calls.returned(call_id, i, data)


async def _open_ops(tracer: Any, calls: _Calls, count: int, open_calls: int, data: str) -> None:
    """``count`` async op calls, ``open_calls`` open at a time, ended oldest first."""
    loop = asyncio.get_running_loop()

    @tracer.op
    async def predict(i: int, data: str, gate: asyncio.Future) -> dict:
        await gate
        return {"i": i, "id": engine.current_call().id}

    running: list[tuple[int, asyncio.Future, asyncio.Task]] = []

    async def end_oldest() -> None:
        i, gate, task = running.pop(0)
        gate.set_result(None)
        calls.returned((await task)["id"], i, data)

    for _ in range(count):
        i, gate = calls.next(), loop.create_future()
        running.append((i, gate, loop.create_task(predict(i, data, gate))))
        await asyncio.sleep(0)  # the task runs to its gate: its call is open
        if len(running) >= open_calls:
            await end_oldest()
    while running:
        await end_oldest()


def run_program(tracer: Any, steps: list[list], work: str, project: str) -> None:
    calls = _Calls(work, project)
    with contextlib.ExitStack() as outer_calls:
        for step in steps:
            what, *args = step
            data = "d" * (args[-1] if what != "pause" else 0)
            if what == "nested":
                _nested(tracer, calls, args[0], args[1], data)
            elif what == "ops":
                _ops(tracer, calls, args[0], data)
            elif what == "structs":
                _structs(tracer, calls, args[0], data)
            elif what == "open":
                asyncio.run(_open_ops(tracer, calls, args[0], args[1], data))
            elif what == "outer":  # open until the program's end: recorded then
                i = calls.next()
                call = outer_calls.enter_context(tracer.call("chaos.outer", inputs={"i": i, "data": data}))
                call.output = {"i": i}
                outer_calls.callback(calls.returned, call.id, i, data)
            elif what == "long":
                i = calls.next()
                with tracer.call("chaos.long", inputs={"i": i, "data": data}) as call:
                    _nested(tracer, calls, args[0], 1, data)
                    time.sleep(args[1])
                    call.output = {"i": i}
                calls.returned(call.id, i, data)
            else:
                time.sleep(args[0])


def _producer(tracer: Any, steps: list[list], work: str, project: str) -> None:
    try:
        run_program(tracer, steps, work, project)
    except BaseException:  # an exception raised into the user's code: the test fails on it
        with open(os.path.join(work, "errors", f"{os.getpid()}.txt"), "w") as errors:
            errors.write(traceback.format_exc())
        os._exit(3)
    with open(os.path.join(work, "done", str(os.getpid())), "w"):
        pass


def main(argv: list[str]) -> int:
    args = json.loads(argv[0])
    work = args["work"]
    for folder in ("ids", "errors", "done"):
        os.makedirs(os.path.join(work, folder), exist_ok=True)
    eng = engine.Engine(url=args["url"], project=args["project"], **args["settings"])
    tracer = eng.producer()
    ctx = multiprocessing.get_context(args["start_method"])
    children = [ctx.Process(target=_producer, args=(tracer, steps, work, args["project"]))
                for steps in args["programs"]]
    for child in children:
        child.start()
    ring_dir = os.path.dirname(eng.spec.lock_path)
    print(json.dumps({"owner": os.getpid(), "ring": eng.spec.shm_name, "ring_dir": ring_dir,
                      "sender_args": eng._sender_args,
                      "producers": [child.pid for child in children]}), flush=True)
    for child in children:
        child.join()
    print(json.dumps({"exitcodes": {child.pid: child.exitcode for child in children}}),
          flush=True)
    sys.stdin.readline()
    stats = eng.close()
    print(json.dumps({key: value for key, value in stats.items() if key != "ring"}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
