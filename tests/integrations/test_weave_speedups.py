"""The weave integration's speedups (``engine.integrations._weave_speedups``) answer as
weave does: value by value, and end to end (what a real weave program stores is the same
with them and without). Each program runs in a process of its own (the speedups replace
weave functions for the whole process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import msgspec
import pytest

from engine.server import serve_subprocess
from tests.integrations._weaves import VERSIONS, weave_python

pytestmark = [pytest.mark.peers, pytest.mark.integration]

try:
    import weave  # noqa: F401
except Exception:  # the peers extra is optional
    pytestmark.append(pytest.mark.skip(reason="weave (the peers extra) is not importable"))

REPO = Path(__file__).resolve().parents[2]
_TIMEOUT_S = 120

_VALUES_PROGRAM = textwrap.dedent(
    """
    import json, sys, types
    import engine.integrations.weave
    engine.integrations.weave.install()
    import weave
    from weave.trace import op as weave_op, wandb_run_context, weave_client

    @weave.op
    def square(x: int) -> int:
        return x * x

    class Thing(weave.Object):
        size: int = 1

    class Plain:
        pass

    class StrSub(str):
        pass

    fast = weave_op.is_op
    applied = getattr(fast, "__wrapped__", None) is not None
    weaves = getattr(fast, "__wrapped__", fast)
    values = [1, -2, 1.5, float("nan"), True, None, "s", "", {}, {"a": [1, 2]}, [], [square],
              (), (1, "x"), b"bytes", StrSub("s"), square, Thing(), Plain(), Plain, len,
              lambda: 1, weave_op]
    same = [fast(v) == weaves(v) for v in values]
    ops = [fast(v) for v in values]
    modules = sorted(n for n, m in sys.modules.items()
                     if n.startswith("weave.") and getattr(m, "is_op", None) is weaves)
    before = wandb_run_context._get_global_wandb_run()
    fake = types.ModuleType("wandb")
    fake.run = types.SimpleNamespace(id="run-1", step=7)
    sys.modules["wandb"] = fake
    with_run = wandb_run_context.get_global_wb_run_context()
    del sys.modules["wandb"]
    # map_to_refs: the same answer (types too: tuples become lists) or the same error
    import collections
    from weave.trace.weave_client import WeaveClient
    Pair = collections.namedtuple("Pair", "a b")
    class DictSub(dict):
        pass
    loop = []
    loop.append(loop)
    refs_fast = weave_client.map_to_refs
    refs_weaves = getattr(refs_fast, "__wrapped__", refs_fast)
    def shape(v):
        if isinstance(v, dict):
            return [type(v).__name__, {str(k): shape(x) for k, x in v.items()}]
        if isinstance(v, (list, tuple)):
            return [type(v).__name__, [shape(x) for x in v]]
        return [type(v).__name__, repr(v)]
    def answer(f, v):
        try:
            return shape(f(v))
        except RecursionError:
            return "RecursionError"
    trees = [1, "s", None, 2.5, {}, [], (), {"a": (1, [2, {"b": None}]), 3: "int key"},
             [1.5, "x", True, (None,)], {"p": Pair(1, 2)}, DictSub(a=1), {"deep": [[[[{"x": ()}]]]]},
             {"fn": square}, loop]
    refs_same = [answer(refs_fast, v) == answer(refs_weaves, v) for v in trees]
    loop_error = answer(refs_fast, loop)
    # redact_sensitive_keys: the same copy (tuples stay tuples), the same keys redacted
    from weave.utils import sanitize
    redact_fast = weave_client.redact_sensitive_keys
    redact_weaves = getattr(redact_fast, "__wrapped__", redact_fast)
    sanitize.add_redact_key("Token")
    secrets = [{"api_key": "k", "API_Key": {"x": 1}, "Authorization": ["b"], "token": 2,
                "tokens": 3, 1: {"auth_headers": ("h",)}, None: [({"TOKEN": "t"},)]},
               {StrSub("api_key"): "kept by str subclass rules"}, {"p": Pair(1, 2)},
               {"o": Thing()}, ({"api_key": 1}, [2]), {(1, 2): "tuple key"}, loop,
               {"deep": [[[[{"authorization": ()}]]]]}] + trees
    redact_same = [answer(redact_fast, v) == answer(redact_weaves, v) for v in secrets]
    # settings read from the environment: the same answer for every setting, set or not,
    # as the program changes os.environ (or replaces it)
    import os
    from weave.trace import settings
    env_fast = settings._env_or_default
    env_weaves = getattr(env_fast, "__wrapped__", env_fast)
    def env_answers():
        out = []
        for name in sorted(settings._ENV_KEYS):
            for default in (None, 0, True):
                try:
                    out.append(repr(env_fast(name, default)) == repr(env_weaves(name, default)))
                except Exception as exc:  # weave's parse error: the same from both
                    try:
                        env_weaves(name, default)
                        out.append(False)
                    except Exception as exc2:
                        out.append(repr(exc) == repr(exc2))
        return out
    env_same = env_answers()
    variables = sorted(settings._ENV_KEYS.values())
    for value in ("", "true", "false", "0", "1", "7", "2.5", "x"):
        for variable in variables:
            os.environ[variable] = value
        env_same += env_answers()
    for variable in variables:
        del os.environ[variable]
    os.putenv(variables[0], "true")  # not in os.environ: neither sees it
    env_same += env_answers()
    saved_environ = os.environ
    os.environ = {variables[0]: "true"}  # a program's own mapping: weave's read
    env_same += env_answers()
    os.environ = saved_environ
    env_same += env_answers()
    # the call processor behind weave's middleware: weave's answer for every layout
    from weave.trace_server_bindings.delegating_trace_server import DelegatingTraceServerMixin
    class Inner:
        def __init__(self, processor):
            self.call_processor = processor
    class Bare:
        pass
    class Middle(DelegatingTraceServerMixin):
        def __init__(self, inner):
            self._next_trace_server = inner
    class MiddleOwn(Middle):
        call_processor = "the class's own"
    class MiddleOptional(Middle):
        optional_delegated_methods = frozenset({"call_processor"})
    processor = object()
    own_instance = Middle(Inner(processor))
    own_instance.call_processor = "the instance's own"
    servers = [Inner(processor), Inner(None), Bare(), Middle(Inner(processor)), Middle(Bare()),
               Middle(Middle(Inner(processor))), Middle(Middle(Bare())), MiddleOwn(Inner(processor)),
               MiddleOptional(Bare()), MiddleOptional(Inner(processor)), own_instance, None, 5]
    processor_fast = weave_client._get_call_processor
    processor_weaves = getattr(processor_fast, "__wrapped__", processor_fast)
    def said(x):
        return "the processor" if x is processor else x if x is None or type(x) is str \
            else type(x).__name__
    processors = [said(processor_fast(s)) for s in servers]
    processor_same = [said(processor_fast(s)) == said(processor_weaves(s)) for s in servers]
    from weave.utils import ids
    made = [weave_client.generate_id() for _ in range(1000)]
    import uuid
    print(json.dumps({
        "refs_applied": refs_fast is not refs_weaves, "refs_same": refs_same,
        "redact_applied": redact_fast is not redact_weaves, "redact_same": redact_same,
        "env_applied": env_fast is not env_weaves, "env_same": env_same,
        "processor_applied": processor_fast is not processor_weaves,
        "processor_same": processor_same, "processors": processors,
        "redacted": shape(redact_fast(secrets[0])),
        "loop": loop_error,
        "nested_applied": WeaveClient._save_nested_objects.__module__ == "engine.integrations._weave_speedups",
        "ids_applied": ids.generate_id.__module__ == "engine.integrations._weave_speedups",
        "sends_applied": __import__("weave.trace.concurrent.futures").trace.concurrent.futures
                         .FutureExecutor.defer.__module__ == "engine.integrations._weave_speedups",
        "ids_v7": all(uuid.UUID(i).version == 7 and str(uuid.UUID(i)) == i for i in made),
        "ids_unique": len(set(made)) == len(made),
        "ids_ms": [int(made[0].replace("-", "")[:12], 16), int(__import__("time").time() * 1000)],
        "applied": applied, "same": same, "ops": ops, "modules_left_slow": modules,
        "client_is_fast": weave_client.is_op is fast,
        "no_wandb": before, "run": [with_run.run_id, with_run.step] if with_run else None,
        "wandb_fast": getattr(wandb_run_context._get_global_wandb_run, "__wrapped__", None)
                      is not None,
    }))
    """
)


def _run(program: str, *args: str, env: dict[str, str] | None = None,
         python: str = sys.executable) -> str:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("WANDB_", "WEAVE_", "WF_", "ENGINE_"))}
    result = subprocess.run([python, "-c", program, *args], capture_output=True,
                            text=True, timeout=_TIMEOUT_S, env={**base, **(env or {})},
                            cwd=str(REPO))
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@VERSIONS
def test_each_value_is_an_op_exactly_when_weave_says_so_and_the_wandb_run_is_found(weave_minor):
    out = json.loads(_run(_VALUES_PROGRAM, python=weave_python(weave_minor)).splitlines()[-1])
    assert out["applied"] and out["wandb_fast"] and out["client_is_fast"]
    assert all(out["same"]), out  # weave's own answer, value by value
    assert out["ops"].count(True) == 1  # the op itself; an op inside a list is not one
    assert out["modules_left_slow"] == []  # every weave module that took is_op by name
    assert out["no_wandb"] is None
    assert out["run"] == ["run-1", 7]  # an active run (wandb imported) is still seen
    assert out["refs_applied"] and out["nested_applied"] and out["ids_applied"]
    assert out["sends_applied"] and out["redact_applied"] and out["env_applied"]
    assert len(out["env_same"]) > 100 and all(out["env_same"]), out["env_same"]
    assert out["processor_applied"] and all(out["processor_same"]), out["processors"]
    assert out["processors"][3] == out["processors"][5] == "the processor"  # through middleware
    assert out["processors"][7] == "the class's own" and out["processors"][10] == "the instance's own"
    assert all(out["redact_same"]), out["redact_same"]  # weave's copy, value by value
    assert "'REDACTED'" in json.dumps(out["redacted"]) and "tokens" in json.dumps(out["redacted"])
    assert all(out["refs_same"]), out["refs_same"]  # weave's copy, value by value
    assert out["loop"] == "RecursionError"  # a list holding itself: weave's own error
    assert out["ids_v7"] and out["ids_unique"]
    made_ms, now_ms = out["ids_ms"]
    assert 0 <= now_ms - made_ms < 60_000  # the time first, in milliseconds, as weave's


def test_env_zero_keeps_weaves_own_functions():
    out = json.loads(_run(_VALUES_PROGRAM, env={"ENGINE_WEAVE_SPEEDUPS": "0"}).splitlines()[-1])
    assert not out["applied"] and not out["wandb_fast"]
    assert not (out["refs_applied"] or out["nested_applied"] or out["ids_applied"]
                or out["sends_applied"] or out["redact_applied"] or out["env_applied"]
                or out["processor_applied"])
    assert all(out["same"]) and out["no_wandb"] is None and out["run"] == ["run-1", 7]


_STORE_PROGRAM = textwrap.dedent(
    """
    import json, logging, sys, threading
    import engine.integrations.weave
    engine.integrations.weave.install()
    import weave
    from weave.trace import weave_client

    # which thread hands each call's start and end to the engine
    writers = []
    write = engine.integrations.weave._write
    def counted(tracer, item, what):
        writers.append((what, threading.current_thread() is threading.main_thread()))
        return write(tracer, item, what)
    engine.integrations.weave._write = counted

    # what weave logs of a send that fails (here: one start its validation refuses)
    failures = []
    class Failures(logging.Handler):
        def emit(self, record):
            failures.append([record.levelname, record.getMessage(), bool(record.exc_info)])
    logging.getLogger("weave.trace.concurrent.futures").addHandler(Failures())
    validate = weave_client.validate_call_start
    def refusing(req):
        if req["start"]["inputs"].get("x") == 13:
            raise ValueError("refused 13")
        return validate(req)
    weave_client.validate_call_start = refusing

    class Prompt(weave.Object):
        text: str
        temperature: float = 0.2

    @weave.op
    def helper(x: int) -> int:
        return x + 1

    @weave.op
    def predict(question: str, context: list, settings: dict, prompt: Prompt, tool,
                wrapped: dict) -> dict:
        return {"answer": question.upper(), "n": len(context), "tool": tool(1),
                "nested": [settings, (1, 2.5, None, True)], "wrapped": wrapped}

    weave.init(sys.argv[1])
    prompt = Prompt(text="be brief")
    for i in range(5):
        # an Object and an op deep inside plain dicts and tuples: weave finds and refs them
        wrapped = {"cfg": [{"prompt": Prompt(text=f"inner {i}")}], "tools": (helper,)}
        predict(f"q{i}", [{"doc": i, "score": 0.5}], {"k": i, "deep": {"a": [i]}}, prompt, helper,
                wrapped)

    @weave.op
    def fails(x: int) -> int:
        raise ValueError(f"bad {x}")

    @weave.op(call_display_name=lambda call: f"outer-{call.inputs['n']}")
    def outer(n: int) -> dict:
        try:
            fails(n)
        except ValueError as exc:
            caught = str(exc)
        return {"inner": helper(n), "list": [helper(n + 1)], "caught": caught}

    @weave.op
    def login(user: str, settings: dict) -> dict:
        return {"ok": True, "headers": {"Authorization": "Bearer x", "accept": "*/*"}}

    login("u", {"api_key": "secret", "nested": [{"Api_Key": "s2", "depth": (1, "x")}]})
    returned = [outer(i) for i in range(3)]
    returned.append(helper(13))  # its start is refused: weave logs it, the program goes on
    weave.finish()
    print(json.dumps({"returned": returned, "failures": failures,
                      "in_place": sum(main for _, main in writers), "writes": len(writers)}))
    """
)


def _stored(url: str, project: str) -> list[dict]:
    request = urllib.request.Request(url + "/calls/stream_query", method="POST",
                                     data=msgspec.json.encode({"project_id": project}))
    with urllib.request.urlopen(request, timeout=30) as resp:
        calls = [msgspec.json.decode(line) for line in resp.read().splitlines()]
    keep = ("op_name", "inputs", "output", "attributes", "exception", "display_name")
    names = {c["id"]: c["op_name"] for c in calls}
    rows = [{**{k: c.get(k) for k in keep}, "parent": names.get(c.get("parent_id"))}
            for c in calls]
    for row in rows:  # what differs from run to run: the process, the time
        row["attributes"] = {k: v for k, v in (row["attributes"] or {}).items()
                             if k not in ("weave",)}
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True))


@VERSIONS
def test_a_weave_program_stores_the_same_calls_with_and_without_the_speedups(tmp_path,
                                                                            weave_minor):
    env_base = {"WANDB_API_KEY": "0123456789abcdef0123456789abcdef01234567",
                "WEAVE_PRINT_CALL_LINK": "false", "WANDB_ERROR_REPORTING": "false",
                "HOME": str(tmp_path), "NO_PROXY": "127.0.0.1,localhost"}
    stored, seen = {}, {}
    with serve_subprocess(tmp_path / "t.db") as url:
        for speedups in ("1", "0"):
            project = f"ent/speedups-{speedups}"
            out = _run(_STORE_PROGRAM, project,
                       env={**env_base, "WF_TRACE_SERVER_URL": url, "WANDB_BASE_URL": url,
                            "ENGINE_WEAVE_SPEEDUPS": speedups}, python=weave_python(weave_minor))
            seen[speedups] = json.loads(out.splitlines()[-1])
            stored[speedups] = _stored(url, project)
    with_speedups, without = stored["1"], stored["0"]
    # 5 predict + 5 helper, 3 outer (each: fails, 2 helper), login; helper(13)'s start was
    # refused
    assert len(with_speedups) == 10 + 3 * 4 + 1, len(with_speedups)
    # what the program saw, and what weave logged of the refused start: the same
    assert seen["1"]["returned"] == seen["0"]["returned"]
    assert seen["1"]["failures"] == seen["0"]["failures"] == \
        [["ERROR", "Task failed: ValueError: refused 13", False]]
    assert seen["1"]["writes"] == seen["0"]["writes"]
    # plain calls of an op already saved went into the ring in place; others from the pool
    assert seen["0"]["in_place"] == 0
    assert 0 < seen["1"]["in_place"] < seen["1"]["writes"], seen["1"]
    # refs name their project: the same calls, once the project is the same
    assert json.dumps(with_speedups).replace("speedups-1", "P") == \
        json.dumps(without).replace("speedups-0", "P")
    refs = json.dumps(with_speedups)
    login = next(c for c in with_speedups if "login" in c["op_name"])
    assert login["inputs"]["settings"]["api_key"] == "REDACTED"
    assert login["inputs"]["settings"]["nested"][0]["Api_Key"] == "REDACTED"
    assert "weave:///ent/speedups-1/object/Prompt:" in refs  # the Object was saved and reffed
    assert "weave:///ent/speedups-1/op/helper:" in refs  # and the op passed as input
    inner = [c["inputs"]["wrapped"] for c in with_speedups if "predict" in c["op_name"]]
    assert all(w["cfg"][0]["prompt"].startswith("weave:///ent/speedups-1/object/Prompt:")
               and w["tools"][0].startswith("weave:///ent/speedups-1/op/helper:") for w in inner)
