"""Stopping a server without dropping the requests it is still reading.

aiohttp's graceful shutdown (``AppRunner.cleanup``) first marks every connection closing,
then waits up to its shutdown timeout for the requests in progress. But a connection marked
closing drops whatever bytes arrive after that (``RequestHandler.data_received`` returns at
once; aio-libs/aiohttp#2298): a request whose body was still coming in (the engine's sender
posts bodies of megabytes) waits for bytes that are thrown away, until the timeout cancels
it unanswered. Under a team's load (3 engines posting into one ``engine serve``) 3 of 6
SIGTERMs took 15-21 s instead of under 1: the server listened to nobody all that time, and
the engines, their rings full, dead-lettered 70-118k of 150k calls for `engine replay`.

So :func:`stop` drains first: the server stops listening, answers every request that
begins from then on 503 with ``Retry-After: 1`` and closes its connection (clients send
it again, to the server that replaces this one), and waits for the requests that had
begun, whose bodies keep arriving, for up to the shutdown timeout. Only then does
aiohttp's own shutdown run, with no request left reading. A refused request's body is
read (and dropped) before its 503: left unread, aiohttp lingers up to 10 s reading it
after the answer (so that closing on unread bytes, a reset, does not destroy the answer
before the client reads it), and the shutdown that follows would drop those bytes too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from aiohttp import web

from engine.server._body import ApiError, BodyPace, error_response


class Drain:
    """Counts the requests in progress; once :meth:`begin` is called, refuses new ones."""

    def __init__(self, command: str) -> None:
        self._command = command
        self.stopping = False
        self.in_progress = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.in_progress += 1
        self._idle.clear()
        try:
            if self.stopping:
                return await self._refuse(request)
            return await handler(request)
        finally:
            self.in_progress -= 1
            if not self.in_progress:
                self._idle.set()

    async def _refuse(self, request: web.Request) -> web.StreamResponse:
        with contextlib.suppress(ApiError, ConnectionError):  # too slow, or gone: closed anyway
            await _drop_body(request)
        response = error_response(503, f"{self._command} is stopping; send the request "
                                  "again", {"Retry-After": "1"})
        response.force_close()
        return response

    async def wait_idle(self, timeout_s: float) -> bool:
        """True once no request is in progress; False after ``timeout_s``."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except asyncio.TimeoutError:
            return False
        return True


async def _drop_body(request: web.Request) -> None:
    """Read the body to its end and keep none of it, at the pace any body must keep."""
    pace = BodyPace(request.content)
    while await pace.read(request.content.readany()):
        pace.check(request.content.total_bytes)


DRAIN = web.AppKey("drain", Drain)


async def stop(runner: web.AppRunner, timeout_s: float) -> None:
    """Stop listening, let the requests in progress finish (at most ``timeout_s``), then
    run aiohttp's cleanup (which cancels what is left: the runner's own shutdown timeout)."""
    drain = runner.app[DRAIN]
    drain.stopping = True
    began = time.monotonic()
    for site in list(runner.sites):
        await site.stop()
    # idle across a turn of the loop: a request whose head arrived as the last one ended
    # has begun by then (it would otherwise read its body into the shutdown)
    while await drain.wait_idle(timeout_s - (time.monotonic() - began)):
        await asyncio.sleep(0)
        if not drain.in_progress:
            break
    # what is left of the timeout for aiohttp's own wait, which then cancels what still runs
    # (a stream longer than the timeout): without it, such a request had the timeout twice.
    # aiohttp takes the timeout only in the runner's constructor; the attribute it keeps it
    # in is the same from 3.9 to 3.14 (requirements.lock pins the version)
    if hasattr(runner, "_shutdown_timeout"):
        runner._shutdown_timeout = max(0.0, timeout_s - (time.monotonic() - began))
    await runner.cleanup()
