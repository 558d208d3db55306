"""Clients of a Weave trace server, in the user's process: :class:`RemoteHTTPTraceServer`
(blocking) and :class:`AsyncRemoteHTTPTraceServer` (asyncio), one implementation (see
``_core``); ``CallProcessor`` sends calls through an :class:`engine.Engine` instead.
May import: ``common``, ``native``, ``producer``, ``wire``.
"""

from engine.client._async import AsyncRemoteHTTPTraceServer
from engine.client._batched import CallProcessor
from engine.client._sync import RemoteHTTPTraceServer

__all__ = ["AsyncRemoteHTTPTraceServer", "CallProcessor", "RemoteHTTPTraceServer"]
