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
    names = _positional_names(fn)
    project = tracer.project

    if inspect.isgeneratorfunction(fn):
        return _wrap_generator(tracer, fn, op_name, names, project)
    if inspect.isasyncgenfunction(fn):
        return _wrap_async_generator(tracer, fn, op_name, names, project)
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
                    names: tuple[str, ...], project: str) -> Callable[..., Any]:
    @functools.wraps(fn)
    def traced_generator(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        call = _Stream(tracer, op_name, _op_inputs(names, args, kwargs), project)
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
                          names: tuple[str, ...], project: str) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def traced_async_generator(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        call = _Stream(tracer, op_name, _op_inputs(names, args, kwargs), project)
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

