"""Ctrl-C in a weave program never lands inside the locks of weave's hand-off to its pool.

Every ``@weave.op`` call hands work to weave's executor from the main thread
(``FutureExecutor.defer`` → ``ThreadPoolExecutor.submit`` → ``Future.add_done_callback``),
taking and releasing the pool's and the futures' locks (``threading.Condition``, written in
Python). A ``KeyboardInterrupt`` raised inside a Condition's ``__enter__`` after its lock
was taken, or in its ``__exit__`` before it was given back (CPython checks for signals
there), leaves that lock held for ever: weave's worker threads block on it, and the
interpreter's exit, which joins them, hangs; the calls still queued in weave are lost when
the process is killed. An eval loop of ``@weave.op`` calls stopped by one SIGINT
(a driver script outside the repo, 150 runs each, weave 0.54.0 through the engine): 2 of 150 runs
hung without this guard, 0 of 150 with it. (weave alone goes through the same hand-off;
its own exit flush kept 31 of 150 such runs waiting past 15 s, for another reason.)

With the integration installed, SIGINT's handler (only where it is Python's default, set
from the main thread, and no debugger or coverage tool traces the thread) looks at the
interrupted code: inside the standard library's thread synchronisation or weave's hand-off
(and not blocked in a wait there, holding none of its locks), it traces the main thread
until its first line outside that code in the code that called it, or until that code goes
on to block in a wait, and raises ``KeyboardInterrupt`` there (microseconds later, no lock
held; never after a wait that may last; never in a finalizer the guarded code sets off,
which would drop it); anywhere else it raises at once, as Python's own handler does. A wait that
only polls (a zero timeout: ``ThreadPoolExecutor.submit`` polls its idle semaphore so,
holding that semaphore's lock and its own) counts as the hand-off, not as waiting. A second
signal while one is deferred is handled at once (the thread is traced).

A program's own handlers -- SIGTERM's or SIGINT's ``sys.exit``, as many programs and
frameworks set, before ``weave.init`` or after it -- raise into the interrupted code just
the same: landing in the hand-off, the exit then hung for ever in the interpreter's join of
weave's threads (3 of 84 SIGTERMs at random points of a weave eval loop, a driver script
outside the repo). While the integration is installed, every Python handler a program sets
(``signal.signal``, or one it had set before) is deferred the same way: it runs, with the
frame it then interrupts, at the first line outside the guarded code; anywhere else at
once. ``signal.signal`` and ``signal.getsignal`` return the program's own handler, never the
guard around it.

``asyncio.run`` (and any ``asyncio.Runner``, ``uvloop.run``; Python 3.11+) turns the first
Ctrl-C into a cancellation of its main task only where SIGINT's handler is Python's default:
the guard is what it stands for, so ``signal.getsignal`` answers Python's default where the
guard is SIGINT's handler, and setting Python's default sets the guard. asyncio then sets its
own handler (wrapped as a program's: landing in the guarded code, it runs after it) and a
weave ``Evaluation`` stops as asyncio stops it (before: KeyboardInterrupt raised in whatever
coroutine ran); at the run's end asyncio gives Python's default back, the guard again. (A
wrapper around ``Runner.run`` did this before: its frame was on the stack of every
coroutine the Runner ran, and so in the traceback weave stores of every op exception raised
in an ``Evaluation``.)

The engine's SIGTERM handler waits for weave's threads, which need the same locks: landing
in the guarded code, it runs at the first line after it too (:func:`defer_if_guarded`,
registered with ``engine.producer._engine.defer_sigterm_with``).
"""

from __future__ import annotations

import collections
import functools
import inspect
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType, ModuleType
from typing import Any

# Condition.wait holds no lock of its own inside the try block that takes the condition's
# lock back whatever is raised (its lines strictly between these two): blocked there, or
# raising there, it only waits
_CONDITION_WAIT = threading.Condition.wait.__code__
# Thread.join holds no lock at any line: Python 3.10-3.12 wait in _wait_for_tstate_lock,
# 3.13+ in C (self._handle.join), with Thread.join itself the frame a signal interrupts
_THREAD_JOIN = threading.Thread.join.__code__
# the interpreter's exit waits for the program's non-daemon threads, holding no lock, at these
# lines of threading._shutdown (3.10-3.12: each thread's lock in turn; 3.13+: in C)
_SHUTDOWN = getattr(getattr(threading, "_shutdown", None), "__code__", None)
_SHUTDOWN_WAITS = ("lock.acquire()", "_thread_shutdown()")
_RELEASED_AFTER, _RELEASED_BEFORE = "self._release_save()", "self._acquire_restore("
_guarded_files: frozenset[str] = frozenset()
# the guard's last decisions, for a Ctrl-C that did not take (read them in the process:
# ``_weave_sigint.history``): (monotonic, what, where)
history: collections.deque[tuple[float, str, str]] = collections.deque(maxlen=16)


def _note(what: str, frame: FrameType | None) -> None:
    where = f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else "-"
    history.append((time.monotonic(), what, where))


def install(*modules: ModuleType) -> bool:
    """Guard the hand-off code of ``modules`` (weave's executor and its thread pool) and the
    standard library's thread synchronisation; True where SIGINT's handler was installed
    (:func:`defer_if_guarded` serves other handlers either way)."""
    global _guarded_files
    import concurrent.futures._base
    import concurrent.futures.thread

    files = [
        getattr(m, "__file__", None)
        for m in (threading, concurrent.futures._base, concurrent.futures.thread, *modules)
    ]
    _guarded_files = frozenset(f for f in files if f)
    _released_lines()  # read now, not in a signal handler
    _shutdown_wait_lines()
    _guard_programs_handlers()
    if threading.current_thread() is not threading.main_thread():
        return False
    _guard_every_cell()
    handler = _get_handler(signal.SIGINT)  # (Python's default is wrapped by now)
    if handler is _on_sigint or _unguarded(handler) is not signal.default_int_handler:
        return False  # the program (or its host: IPython, a test runner) handles SIGINT
    _set_handler(signal.SIGINT, _on_sigint)
    return True


def _guard_every_cell() -> None:
    """In IPython (a Jupyter kernel): each cell starts with the guard as SIGINT's handler.
    ipykernel sets Python's default handler before each cell and its own (SIG_IGN) back after
    it, with the signal module's functions as they were when it loaded; so the guard set in
    the cell that imported weave was gone from every later one, where a Ctrl-C (the
    notebook's interrupt) inside weave's hand-off left its lock held."""
    ipython = sys.modules.get("IPython")
    shell = getattr(ipython, "get_ipython", lambda: None)()
    events = getattr(shell, "events", None)
    if events is not None and _guard_the_cell not in events.callbacks.get("pre_run_cell", ()):
        events.register("pre_run_cell", _guard_the_cell)


def _guard_the_cell(info: Any = None) -> None:
    """Where the cell runs with Python's default handler (ipykernel's ``_cancel_on_sigint``
    of a cell with top-level ``await`` sets its own, which the program-handler guard wraps)."""
    if (threading.current_thread() is threading.main_thread()
            and _get_handler(signal.SIGINT) is signal.default_int_handler):
        _set_handler(signal.SIGINT, _on_sigint)


def defer_if_guarded(frame: FrameType | None, run: Callable[[], None]) -> bool:
    """For another signal's handler (the engine's SIGTERM: it waits for weave's threads,
    which need the locks the interrupted code may hold): True where the interrupted code
    is guarded and ``run`` will run at the first line outside it instead."""
    if not _deferrable(frame):
        return False
    _note("deferred", frame)
    _defer(frame, lambda where: run())
    return True


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    if not defer_if_guarded(frame, _raise_keyboard_interrupt):
        _raise_until_it_lands(signal.default_int_handler, signum, frame)


_on_sigint.defers_itself = True  # type: ignore[attr-defined]
# what the program sees (signal.getsignal) where the guard stands: Python's default, whose
# KeyboardInterrupt it raises; so asyncio.Runner sets its own handler (wrapped as any other)
# and gives Python's default back, which sets the guard again
_on_sigint.engine_guards = signal.default_int_handler  # type: ignore[attr-defined]
# the signal module's own functions, before the guard replaced them
_set_handler, _get_handler = signal.signal, signal.getsignal


def _guard_programs_handlers() -> None:
    """Every Python signal handler the program sets from now on, and each one it has set,
    runs outside the guarded code (its own ``sys.exit`` raised inside it hung the exit)."""
    if signal.signal is not _program_sets_handler:
        signal.signal, signal.getsignal = _program_sets_handler, _programs_handler
    if threading.current_thread() is not threading.main_thread():
        return  # (handlers are set from the main thread only)
    for signum in signal.valid_signals():
        try:
            handler = _get_handler(signum)
        except (OSError, ValueError):
            continue
        if _needs_guard(handler):
            _set_handler(signum, _guarded(handler))


def _program_sets_handler(signum: Any, handler: Any) -> Any:
    if signum == signal.SIGINT and handler is signal.default_int_handler:
        handler = _on_sigint  # Python's default, deferred out of the guarded code
    return _unguarded(_set_handler(signum, _guarded(handler) if _needs_guard(handler)
                                   else handler))  # fmt: skip


def _programs_handler(signum: Any) -> Any:
    return _unguarded(_get_handler(signum))


def _needs_guard(handler: Any) -> bool:
    """A Python handler that neither is one of the guard's nor defers itself (the guard's
    SIGINT handler, the engine's SIGTERM handler)."""
    return (callable(handler) and not hasattr(handler, "engine_guards")
            and not getattr(handler, "defers_itself", False))


def _unguarded(handler: Any) -> Any:
    return getattr(handler, "engine_guards", handler)


def _guarded(handler: Callable[[int, FrameType | None], Any]) -> Callable[..., Any]:
    def guarded(signum: int, frame: FrameType | None) -> Any:
        if not _deferrable(frame):
            return _raise_until_it_lands(handler, signum, frame)
        _note(f"deferred a handler of signal {signum}", frame)
        _defer(frame, lambda where: handler(signum, where))
        return None

    guarded.engine_guards = handler  # type: ignore[attr-defined]
    return guarded


def _raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


def _raise_until_it_lands(handler: Callable[[int, FrameType | None], Any], signum: int,
                          frame: FrameType | None) -> Any:
    """``handler(signum, frame)`` now; what it raises raised again at the first line of the
    interrupted code (``frame`` and its callers) run without it, if it never got there.

    Python runs a handler wherever the interpreter next checks for signals, C code included,
    and some C code drops what was raised meanwhile: a finalizer run as the interrupted
    code allocates (the garbage collector frees an object whose ``__del__`` or C finalizer
    checks signals). A notebook's interrupt landing so in weave's serialisation was lost
    without a trace (the cell's 30 s loop ran to its end; 1 in ~15 runs of the interrupted
    loop beside two CPU-bound processes). It counts as arrived once it propagates past the
    frame it was raised in, a line runs in an ``except`` or ``finally`` block handling it,
    or that frame goes on after it (a ``with contextlib.suppress(KeyboardInterrupt)``)."""
    try:
        return handler(signum, frame)
    except BaseException as exc:
        _note(f"raised {type(exc).__name__} at once", frame)
        if frame is not None and sys.gettrace() is None:
            _watch_it_land(frame, exc)
        raise


def _watch_it_land(raised_in: FrameType, exc: BaseException) -> None:
    interrupted = _frames_from(raised_in)
    seen_where_raised = False  # the frame it was raised in has it (not C code alone)

    def watch(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal seen_where_raised
        if frame not in interrupted:
            return watch
        if event == "exception":
            if not isinstance(arg[1], type(exc)):
                return watch
            if frame is raised_in:  # a finalizer's frame may still drop it as it returns
                seen_where_raised = True
                return watch
        elif event != "line":
            return watch
        interrupted.clear()
        _trace_stack(frame, None)
        # a line with it handled: in an except or finally block, or after the frame it was
        # raised in dealt with it (caught, or a with-block's __exit__ suppressed it)
        if event == "line" and not (seen_where_raised and frame is raised_in
                                    or isinstance(sys.exc_info()[1], type(exc))):
            _note("raised again: dropped where it was raised", frame)
            raise exc  # dropped on the way: here, as if it were raised now
        _note("arrived", frame)
        return None

    _trace_stack(raised_in, watch)


def _deferrable(frame: FrameType | None) -> bool:
    """In the guarded code, and no debugger or coverage tool traces the thread."""
    return _in_hand_off(frame) and sys.gettrace() is None


def _defer(frame: FrameType | None, run: Callable[[FrameType], None]) -> None:
    """``run(where)`` at ``where``, the first line run outside the guarded code in the
    interrupted code's callers (the frames on the stack when the signal came), or where the
    guarded code goes on to block in a wait (holding none of its locks: the wait may last,
    as a ``Future.result()`` does): a line event of a frame there, traced on this thread
    only until then. Not in code the guarded code calls meanwhile: a finalizer it sets off
    (a ``__del__``; the ``__repr__`` of a ResourceWarning for an unclosed socket freed as a
    ``Future`` is made) drops what is raised in it, and a notebook's Ctrl-C raised there
    was lost (the interrupted loop ran on to its end)."""
    interrupted = _frames_from(frame)

    def outside(frame: FrameType, event: str, arg: Any) -> Any:
        if event != "line" or _in_hand_off(frame):
            return outside
        if frame not in interrupted and not _blocked(frame):
            return outside  # code the guarded code called: on to its callers
        interrupted.clear()
        _trace_stack(frame, None)
        _note("ran deferred", frame)
        run(frame)
        return None

    _trace_stack(frame, outside)


def _frames_from(frame: FrameType | None) -> set[FrameType]:
    """``frame`` and every frame it was called from: the code a signal interrupted."""
    frames = set()
    while frame is not None:
        frames.add(frame)
        frame = frame.f_back
    return frames


def _trace_stack(frame: FrameType | None, tracer: Any) -> None:
    """``tracer`` for this thread and for ``frame`` and every frame it was called from."""
    while frame is not None:
        frame.f_trace = tracer
        frame = frame.f_back
    sys.settrace(tracer)


_held_checks: list[Callable[[], bool]] = []


def defer_while(held: Callable[[], bool]) -> None:
    """While ``held()`` (the interrupted thread holds a lock weave's threads need: the
    engine's ring writer's, taken by a send made in the op's thread), a signal is handled
    as in the guarded code: at the first line after it is given back."""
    if held not in _held_checks:
        _held_checks.append(held)


def _in_hand_off(frame: FrameType | None) -> bool:
    """The interrupted code is in the guarded files (the innermost frame) and not blocked in
    a wait there, or holds a lock of :func:`defer_while`'s."""
    if frame is None:
        return False
    if frame.f_code.co_filename in _guarded_files and not _blocked(frame):
        return True
    return any(held() for held in _held_checks)


def _blocked(frame: FrameType) -> bool:
    """Blocked (or about to block) in a wait with no lock of the guarded code held by this
    frame: a ``Condition.wait`` inside the try block that takes its lock back (given back
    before it), that may wait (no timeout, or a positive one), or a thread's join that may
    wait (``Thread.join``, and on 3.10-3.12 the ``_wait_for_tstate_lock`` it waits in), or
    the interpreter's exit waiting for the program's non-daemon threads.
    Anywhere else in a wait, or in a poll (a zero timeout: ``ThreadPoolExecutor.submit``
    polls its idle semaphore so, inside its own lock and the semaphore's), the frames may
    hold locks and return at once: not blocked (a SIGTERM handled there waited 10 s for weave's threads,
    which needed the semaphore's lock: 0 of 219 calls stored, once in ~12 runs of the suite)."""
    code = frame.f_code
    if code is _CONDITION_WAIT:
        released = _released_lines()
        timeout = frame.f_locals.get("timeout")
        return (released[0] < frame.f_lineno < released[1]
                and (timeout is None or timeout > 0))
    if code is _THREAD_JOIN:
        return frame.f_locals.get("timeout") != 0
    if code is _SHUTDOWN:
        return frame.f_lineno in _shutdown_wait_lines()
    if code.co_name == "_wait_for_tstate_lock" and code.co_filename == threading.__file__:
        return bool(frame.f_locals.get("block", True)) and frame.f_locals.get("timeout") != 0
    return False


@functools.lru_cache(maxsize=1)
def _released_lines() -> tuple[int, int]:
    """The lines of ``Condition.wait`` around the try block in which its lock is given back
    (the ``try:`` after ``_release_save()``, the ``_acquire_restore`` in its ``finally``);
    without its source: the whole function, as a wait."""
    try:
        lines, first = inspect.getsourcelines(_CONDITION_WAIT)
    except (OSError, TypeError):
        return (0, 1 << 30)
    released = next((n for n, line in enumerate(lines) if _RELEASED_AFTER in line), None)
    if released is None:
        return (0, 1 << 30)
    after = next((first + n for n, line in enumerate(lines)
                  if n > released and line.strip().startswith("try:")), 0)
    before = next((first + n for n, line in enumerate(lines) if _RELEASED_BEFORE in line),
                  1 << 30)
    return (after, before)


@functools.lru_cache(maxsize=1)
def _shutdown_wait_lines() -> frozenset[int]:
    """The lines of ``threading._shutdown`` that wait for the non-daemon threads (none
    without its source: the exit's wait is then deferred, as before)."""
    if _SHUTDOWN is None:
        return frozenset()
    try:
        lines, first = inspect.getsourcelines(_SHUTDOWN)
    except (OSError, TypeError):
        return frozenset()
    return frozenset(first + n for n, line in enumerate(lines) if line.strip() in _SHUTDOWN_WAITS)
