"""The program a delivery-guarantee test runs and signals: an eval loop as users write it.

``python -m tests.pipeline_owner JSON`` makes one :class:`engine.Engine`, forks
``producers`` processes, and traces calls in every one of them (the owner too) until each
made ``calls`` (0: until a signal ends it), ``pace_s`` apart. After each call's ``with`` block returned, its
id is appended to ``<ids_dir>/<pid>.ids`` with one unbuffered write: those are the calls
the engine promised to keep. The first stdout line is JSON naming the owner, the sender and
the ring set; after a normal end, the last is the JSON of ``close()``'s stats.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time

from engine.producer._engine import Engine


def _trace(tracer, calls: int, ids_dir: str, payload_bytes: int, pace_s: float) -> None:
    fd = os.open(os.path.join(ids_dir, f"{os.getpid()}.ids"),
                 os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    filler = "x" * payload_bytes
    i = 0
    while not calls or i < calls:
        with tracer.call("eval.example", inputs={"i": i, "text": filler}) as call:
            call.output = {"i": i, "pid": os.getpid()}
        os.write(fd, call.id.encode() + b"\n")
        i += 1
        if pace_s:
            time.sleep(pace_s)
    os.close(fd)


def main(argv: list[str]) -> int:
    args = json.loads(argv[0])
    eng = Engine(url=args["url"], project=args["project"], **args["settings"])
    sender = eng._sender.pid if eng._sender is not None else None
    print(json.dumps({"owner": os.getpid(), "sender": sender, "ring": eng.spec.shm_name,
                      "ring_dir": os.path.dirname(eng.spec.lock_path)}), flush=True)
    tracer = eng.producer()
    ctx = multiprocessing.get_context("fork")
    work = (tracer, args["calls"], args["ids_dir"], args.get("payload_bytes", 200),
            args.get("pace_s", 0.0))
    children = [ctx.Process(target=_trace, args=work) for _ in range(args["producers"])]
    for child in children:
        child.start()
    _trace(*work)
    for child in children:
        child.join()
    stats = eng.close()
    print(json.dumps({key: value for key, value in stats.items() if key != "ring"}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
