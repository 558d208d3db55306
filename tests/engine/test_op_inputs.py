"""What ``@tracer.op`` records as a call's inputs, and the kinds of function it wraps:
inputs are bound as weave binds them; a classmethod or staticmethod stays one."""

from __future__ import annotations

import inspect
from typing import Any

import msgspec
import pytest

from tests.engine.test_tracer import decoded, drain, eng  # noqa: F401 -- the fixture


def _weaves_inputs(fn, args: tuple, kwargs: dict) -> dict[str, Any]:
    """What weave 0.54 records (weave/trace/op.py: ``_default_on_input_handler``, then
    ``_apply_fn_defaults_to_inputs``), as the server stores it (JSON)."""
    sig = inspect.signature(fn)
    inputs = dict(sig.bind(*args, **kwargs).arguments)
    for name, param in sig.parameters.items():
        if name in inputs:
            continue
        if param.default is not param.empty:
            inputs[name] = param.default
        if param.kind is param.VAR_POSITIONAL:
            inputs[name] = ()
        if param.kind is param.VAR_KEYWORD:
            inputs[name] = {}
    return msgspec.json.decode(msgspec.json.encode(inputs))


def rest_and_keyword(x, *rest, key=None):
    return x


def both_var_kinds(a, *args, b=2, **kw):
    return a


def every_kind(a, /, b, c=3, *, d, e=5, **kw):
    return a


def defaults(a, b=2, c=None):
    return a


def positional(a, b):
    return a


class Model:
    def method(self, x):
        return x


@pytest.mark.parametrize(("fn", "args", "kwargs"), [
    (rest_and_keyword, (1, "x", "y"), {}),
    (rest_and_keyword, (1,), {"key": "k"}),
    (both_var_kinds, (1, 2, 3), {"b": 4}),
    (both_var_kinds, (1, 2), {"args": "a keyword named args", "z": 0}),
    (both_var_kinds, (1,), {}),
    (every_kind, (1, 2), {"d": 4, "a": "a keyword of a positional-only name"}),
    (every_kind, (1,), {"b": 2, "c": 3, "d": 4, "e": 6}),
    (defaults, (1,), {"c": 3}),
    (positional, (1,), {"b": 2}),
    (Model().method, (5,), {}),  # bound: its self is not an argument
], ids=lambda v: v.__name__ if callable(v) else None)
def test_op_inputs_are_the_arguments_bound_as_weave_binds_them(eng, fn, args, kwargs):  # noqa: F811
    traced = eng.producer().op(fn)
    assert traced(*args, **kwargs) == fn(*args, **kwargs)
    start, _end = decoded(drain(eng))
    assert start["inputs"] == _weaves_inputs(fn, args, kwargs)


def test_a_call_that_does_not_fit_the_signature_raises_the_users_error_and_keeps_its_arguments(
        eng):  # noqa: F811
    traced = eng.producer().op(defaults)
    with pytest.raises(TypeError, match="positional"):
        traced(1, 2, 3, 4)
    start, end = decoded(drain(eng))
    assert start["inputs"] == {"a": 1, "b": 2, "c": 3, "args": [4]}
    assert end["exception"].startswith("TypeError")


def test_an_op_above_classmethod_or_staticmethod_stays_one_and_records_its_inputs(eng):  # noqa: F811
    tracer = eng.producer()

    class Ranker:
        @tracer.op
        @classmethod
        def build(cls, size):
            return cls.__name__, size

        @tracer.op
        @staticmethod
        def score(x, scale=2):
            return x * scale

        @classmethod
        @tracer.op
        def below(cls, size):
            return size

    assert isinstance(Ranker.__dict__["build"], classmethod)
    assert isinstance(Ranker.__dict__["score"], staticmethod)
    assert Ranker.build(5) == Ranker().build(5) == ("Ranker", 5)
    assert Ranker.score(6) == Ranker().score(6) == 12
    assert Ranker.below(7) == 7
    starts = [r for r in decoded(drain(eng)) if "op_name" in r]
    assert [s["op_name"] for s in starts] == [
        *[f"{Ranker.__qualname__}.build"] * 2, *[f"{Ranker.__qualname__}.score"] * 2,
        f"{Ranker.__qualname__}.below"]
    assert [s["inputs"]["size"] for s in starts if "size" in s["inputs"]] == [5, 5, 7]
    assert [s["inputs"] for s in starts[2:4]] == [{"x": 6, "scale": 2}] * 2
