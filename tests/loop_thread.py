"""A test helper server whose asyncio loop runs in a daemon thread of the test process:
``with Helper(...) as helper:`` runs its ``_start`` there (which sets ``url``), and at the end
its ``_stop``, then stops and closes the loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

_TIMEOUT_S = 10


class LoopThread:
    url = ""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the helper's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_TIMEOUT_S)

    def __enter__(self):  # noqa: ANN204 - the subclass
        self._thread.start()
        self._call(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_TIMEOUT_S)
        self._loop.close()

    async def _start(self) -> None:
        raise NotImplementedError

    async def _stop(self) -> None:
        raise NotImplementedError
