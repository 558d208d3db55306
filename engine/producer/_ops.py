"""``@tracer.op``: the wrapper that makes every call of a function a traced call."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.producer._handle import CallHandle

if TYPE_CHECKING:
    from engine.producer._tracer import Tracer


def wrap_op(tracer: Tracer, fn: Callable[..., Any], op_name: str) -> Callable[..., Any]:
    names = _positional_names(fn)
    project = tracer.project

    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def traced_async(*args: Any, **kwargs: Any) -> Any:
            handle = CallHandle(tracer, op_name, _op_inputs(names, args, kwargs), {}, None,
                                project)._begin()
            try:
                handle.output = result = await fn(*args, **kwargs)
            except BaseException as exc:
                handle.__exit__(None, exc, None)
                raise
            handle.__exit__(None, None, None)
            return result

        return traced_async

    @functools.wraps(fn)
    def traced(*args: Any, **kwargs: Any) -> Any:
        handle = CallHandle(tracer, op_name, _op_inputs(names, args, kwargs), {}, None,
                            project)._begin()
        try:
            handle.output = result = fn(*args, **kwargs)
        except BaseException as exc:
            handle.__exit__(None, exc, None)
            raise
        handle.__exit__(None, None, None)
        return result

    return traced


def _positional_names(fn: Callable[..., Any]) -> tuple[str, ...]:
    code = getattr(fn, "__code__", None)
    if code is None:
        return ()
    return code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]


def _op_inputs(names: tuple[str, ...], args: tuple, kwargs: dict) -> dict[str, Any]:
    """An op call's inputs: its arguments by parameter name."""
    inputs = dict(zip(names, args)) if len(args) <= len(names) else _spill(names, args)
    if kwargs:
        inputs.update(kwargs)
    return inputs


def _spill(names: tuple[str, ...], args: tuple) -> dict[str, Any]:
    inputs = dict(zip(names, args))
    inputs["args"] = list(args[len(names):])
    return inputs

