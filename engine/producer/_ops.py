"""``@tracer.op``: the wrapper that makes every call of a function a traced call.

A generator function (sync or async: a streamed LLM answer) is traced from its first
item to its end: the call starts when the consumer first asks for an item, its output is
the items it yielded (the first :data:`MAX_KEPT_ITEMS`; ``summary["yielded"]`` counts them
all) and it ends when the generator is exhausted, raises, or is closed early by the
consumer (``break``: not an error). The generator's body runs with the call as the
current one, so the ops it calls nest under it, and the consumer's code between items
does not: each step runs in a context of the call's own (``contextvars``). ``send``,
``throw`` and ``close`` reach the user's generator as they would without the op.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any

from engine.producer._handle import CallHandle

if TYPE_CHECKING:
    from engine.producer._tracer import Tracer

MAX_KEPT_ITEMS = 1000  # a generator op's output keeps its first items, not a long stream


def wrap_op(tracer: Tracer, fn: Callable[..., Any], op_name: str) -> Callable[..., Any]:
    if isinstance(fn, (classmethod, staticmethod)):  # above the decorator: still one of them
        return type(fn)(wrap_op(tracer, fn.__func__, op_name))
    inputs_of_call = inputs_of(fn)
    project = tracer.project

    if inspect.isgeneratorfunction(fn):
        return _wrap_generator(tracer, fn, op_name, inputs_of_call, project)
    if inspect.isasyncgenfunction(fn):
        return _wrap_async_generator(tracer, fn, op_name, inputs_of_call, project)
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def traced_async(*args: Any, **kwargs: Any) -> Any:
            handle = CallHandle(tracer, op_name, inputs_of_call(args, kwargs), {}, None,
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
        handle = CallHandle(tracer, op_name, inputs_of_call(args, kwargs), {}, None,
                            project)._begin()
        try:
            handle.output = result = fn(*args, **kwargs)
        except BaseException as exc:
            handle.__exit__(None, exc, None)
            raise
        handle.__exit__(None, None, None)
        return result

    return traced


class _Stream:
    """A generator op's call, begun and ended in its own context (``ctx``)."""

    __slots__ = ("ctx", "handle", "kept", "yielded")

    def __init__(self, tracer: Tracer, op_name: str, inputs: dict[str, Any], project: str) -> None:
        self.ctx = contextvars.copy_context()  # the caller's current call is the parent
        self.handle = self.ctx.run(CallHandle(tracer, op_name, inputs, {}, None, project)._begin)
        self.kept: list[Any] = []
        self.yielded = 0

    def open(self, fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> Any:
        """The user's generator, made in the call's context (a call that cannot make it,
        bad arguments, ends with that error)."""
        try:
            return self.ctx.run(fn, *args, **kwargs)
        except BaseException as exc:
            self.end(exc)
            raise

    def took(self, item: Any) -> None:
        self.yielded += 1
        if len(self.kept) < MAX_KEPT_ITEMS:
            self.kept.append(item)

    def end(self, exc: BaseException | None) -> None:
        self.handle.output = self.kept
        self.handle.summary = {"yielded": self.yielded}
        self.ctx.run(self.handle.__exit__, None, exc, None)


def _wrap_generator(tracer: Tracer, fn: Callable[..., Any], op_name: str,
                    inputs_of_call: Callable[[tuple, dict], dict[str, Any]],
                    project: str) -> Callable[..., Any]:
    @functools.wraps(fn)
    def traced_generator(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        call = _Stream(tracer, op_name, inputs_of_call(args, kwargs), project)
        inner = call.open(fn, args, kwargs)
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            try:
                if thrown is None:
                    item = call.ctx.run(inner.send, sent)
                else:
                    item, thrown = call.ctx.run(inner.throw, thrown), None
            except StopIteration as stop:
                call.end(None)
                return stop.value
            except BaseException as exc:
                call.end(exc)
                raise
            call.took(item)
            try:
                sent = yield item
            except GeneratorExit:  # the consumer stopped early (break, close())
                try:
                    call.ctx.run(inner.close)
                finally:
                    call.end(None)
                raise
            except BaseException as exc:  # thrown in by the consumer: the user's generator's
                sent, thrown = None, exc

    return traced_generator


def _wrap_async_generator(tracer: Tracer, fn: Callable[..., Any], op_name: str,
                          inputs_of_call: Callable[[tuple, dict], dict[str, Any]],
                          project: str) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def traced_async_generator(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        call = _Stream(tracer, op_name, inputs_of_call(args, kwargs), project)
        inner = call.open(fn, args, kwargs)
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            try:
                step = inner.asend(sent) if thrown is None else inner.athrow(thrown)
                item, thrown = await _in_context(call.ctx, step), None
            except StopAsyncIteration:
                call.end(None)
                return
            except BaseException as exc:
                call.end(exc)
                raise
            call.took(item)
            try:
                sent = yield item
            except GeneratorExit:  # the consumer stopped early (break, aclose())
                try:
                    await _in_context(call.ctx, inner.aclose())
                finally:
                    call.end(None)
                raise
            except BaseException as exc:
                sent, thrown = None, exc

    return traced_async_generator


class _Suspend:
    """Hands what a coroutine step yielded (an asyncio future) to the task running us."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, Any, Any]:
        return (yield self.value)


async def _in_context(ctx: contextvars.Context, coro: Coroutine[Any, Any, Any]) -> Any:
    """``await coro``, each of its steps run in ``ctx`` (the task's own context stays as
    it is: what the coroutine sets, it sets in ``ctx``)."""
    sent: Any = None
    thrown: BaseException | None = None
    while True:
        try:
            if thrown is None:
                yielded = ctx.run(coro.send, sent)
            else:
                yielded, thrown = ctx.run(coro.throw, thrown), None
        except StopIteration as stop:
            return stop.value
        try:
            sent = await _Suspend(yielded)
        except BaseException as exc:  # a cancellation: the coroutine's to handle
            sent, thrown = None, exc


def inputs_of(fn: Callable[..., Any]) -> Callable[[tuple, dict], dict[str, Any]]:
    """How an op call's arguments become its inputs: by parameter name, as weave records
    them (``inspect.signature(fn).bind``, then the defaults not given): ``*args`` as a list
    under its own name, ``**kwargs`` as a dict under its own, keyword-only ones by name.
    Never raises: arguments that do not fit the signature are kept (``args``, their own
    keyword), and the call itself raises the user's TypeError."""
    try:
        params = tuple(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # no signature (some builtins): every argument kept
        params = ()
    names = tuple(p.name for p in params if p.kind in _POSITIONAL)
    if all(p.kind in _POSITIONAL and p.default is p.empty for p in params):
        return _by_position(names)  # the common op: the fast path
    return _Binding(params, names).inputs


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _by_position(names: tuple[str, ...]) -> Callable[[tuple, dict], dict[str, Any]]:
    """The inputs of a call of positional parameters without defaults."""
    def inputs_of_call(args: tuple, kwargs: dict) -> dict[str, Any]:
        inputs = dict(zip(names, args))
        if len(args) > len(names):  # too many: the call raises; what was passed is kept
            inputs["args"] = list(args[len(names):])
        if kwargs:
            inputs.update(kwargs)
        return inputs

    return inputs_of_call


class _Binding:
    """Any other signature: ``*args``, ``**kwargs``, keyword-only parameters, defaults."""

    __slots__ = ("names", "var_args", "var_kw", "by_keyword", "defaults")

    def __init__(self, params: tuple[inspect.Parameter, ...], names: tuple[str, ...]) -> None:
        kinds = {p.kind: p.name for p in params}
        self.names = names
        self.var_args = kinds.get(inspect.Parameter.VAR_POSITIONAL)
        self.var_kw = kinds.get(inspect.Parameter.VAR_KEYWORD)
        self.by_keyword = frozenset(p.name for p in params if p.kind in _BY_KEYWORD)
        self.defaults = tuple((p.name, p.default) for p in params if p.default is not p.empty)

    def inputs(self, args: tuple, kwargs: dict) -> dict[str, Any]:
        names = self.names
        inputs = dict(zip(names, args))
        if self.var_args is not None:
            inputs[self.var_args] = list(args[len(names):])
        elif len(args) > len(names):
            inputs["args"] = list(args[len(names):])
        if self.var_kw is None:
            inputs.update(kwargs)
        else:
            extra = {}
            for key, value in kwargs.items():
                if key in self.by_keyword:
                    inputs[key] = value
                else:  # a positional-only parameter's name too, as Python binds it
                    extra[key] = value
            inputs[self.var_kw] = extra
        for name, value in self.defaults:
            if name not in inputs:
                inputs[name] = value
        return inputs


_BY_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
