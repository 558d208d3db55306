"""The op wrappers' promise: tracing never breaks the user's code.

``@tracer.op``, ``tracer.call`` and the weave integration write through ``call_start`` /
``call_end`` like everyone else; only when that raised do they come here (nothing on their
fast path): a value the encoder cannot take is replaced by a placeholder saying why
(``_sanitise``) and the copy written, counted by reason; a call that still cannot be
written (a closed tracer, a full ring under ``on_full="raise"``) is logged, counted where it
can be, and dropped. Nothing but the user's own exceptions (and ``BaseException``\\ s that
are not ``Exception``\\ s: KeyboardInterrupt, SystemExit) reaches the user's code.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

import msgspec

from engine.common._errors import Closed, NoRingSlot, RingFull, SharedMemoryFull
from engine.producer._sanitise import sanitise_item
from engine.wire.calls import (
    CompletedCallSchemaForInsert,
    EndedCallSchemaForInsert,
    StartedCallSchemaForInsert,
)

if TYPE_CHECKING:
    from engine.producer._tracer import Tracer

log = logging.getLogger("engine.producer")
_NOT_FIXED_BY_SANITISING = (Closed, RingFull)
_logged_lock = threading.Lock()
_logged: set[str] = set()  # kinds of drop logged as warnings in this process


def write_safely(tracer: Tracer, item: Any, what: str, error: BaseException) -> bool:
    """``tracer.call_start`` / ``call_end`` / ``call_complete`` (``what``: ``"start"``,
    ``"end"``, ``"call"``) of ``item`` raised ``error``: write a sanitised copy instead.
    True if written, False if the call was dropped (logged). Never raises an ``Exception``."""
    if not isinstance(error, _NOT_FIXED_BY_SANITISING):
        try:
            _write_sanitised(tracer, item, what)
            return True
        except Exception as exc:  # still not writable: dropped below
            error = exc
    _dropped(tracer, item, error)
    return False


def _write_sanitised(tracer: Tracer, item: Any, what: str) -> None:
    item_type, write = {
        "start": (StartedCallSchemaForInsert, tracer.call_start),
        "end": (EndedCallSchemaForInsert, tracer.call_end),
        "call": (CompletedCallSchemaForInsert, tracer.call_complete),
    }[what]
    if not isinstance(item, item_type):
        item = msgspec.convert(item, item_type, strict=False)
    clean, counts = sanitise_item(item, tracer._settings.strict, tracer._item_limit())
    write(clean)
    tracer._add_counts(counts)


def _dropped(tracer: Tracer, item: Any, error: BaseException) -> None:
    if not isinstance(error, _NOT_FIXED_BY_SANITISING) or isinstance(
            error, (SharedMemoryFull, NoRingSlot)):
        tracer._count_dropped(error)
    call_id = item.get("id") if isinstance(item, dict) else getattr(item, "id", None)
    kind = type(error).__name__
    with _logged_lock:
        first = kind not in _logged
        _logged.add(kind)
    # the first of a kind as a warning; then at debug level (a closed engine would log
    # once per traced call)
    log.log(logging.WARNING if first else logging.DEBUG, "call %s not traced: %s", call_id,
            _text(error))


def _text(error: BaseException) -> str:
    try:
        return str(error) or type(error).__name__
    except Exception:
        return type(error).__name__
