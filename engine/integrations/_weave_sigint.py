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
(and not waiting there), it traces the main thread until its first line outside that code
and raises ``KeyboardInterrupt`` there (microseconds later, no lock held); anywhere else it
raises at once, as Python's own handler does. A program that sets its own SIGINT handler
replaces this one.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType, ModuleType
from typing import Any

# where the interrupted code may only be waiting: KeyboardInterrupt at once, as always
_WAITS = frozenset(
    (
        "wait",
        "wait_for",
        "join",
        "_wait_for_tstate_lock",
        "result",
        "exception",
        "as_completed",
        "flush",
        "shutdown",
        "_python_exit",
    )
)
_guarded_files: frozenset[str] = frozenset()


def install(*modules: ModuleType) -> bool:
    """Guard the hand-off code of ``modules`` (weave's executor and its thread pool) and the
    standard library's thread synchronisation; True where installed."""
    global _guarded_files
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return False  # the program (or its host: IPython, a test runner) handles SIGINT
    import concurrent.futures._base
    import concurrent.futures.thread

    files = [
        getattr(m, "__file__", None)
        for m in (threading, concurrent.futures._base, concurrent.futures.thread, *modules)
    ]
    _guarded_files = frozenset(f for f in files if f)
    signal.signal(signal.SIGINT, _on_sigint)
    return True


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    if not _in_hand_off(frame) or sys.gettrace() is not None:  # (a debugger's, coverage's)
        signal.default_int_handler(signum, frame)
    # raise it at the first line run outside the guarded code: a line event of a frame
    # there, traced on this thread only until then
    _trace_stack(frame, _raise_outside)


def _raise_outside(frame: FrameType, event: str, arg: Any) -> Any:
    if event != "line" or frame.f_code.co_filename in _guarded_files:
        return _raise_outside
    _trace_stack(frame, None)
    raise KeyboardInterrupt


def _trace_stack(frame: FrameType | None, tracer: Any) -> None:
    """``tracer`` for this thread and for ``frame`` and every frame it was called from."""
    while frame is not None:
        frame.f_trace = tracer
        frame = frame.f_back
    sys.settrace(tracer)


def _in_hand_off(frame: FrameType | None) -> bool:
    """The interrupted code is in the guarded files (the innermost frame) and not waiting."""
    if frame is None:
        return False
    code = frame.f_code
    return code.co_filename in _guarded_files and code.co_name not in _WAITS
