"""Clients of a Weave trace server: :class:`RemoteHTTPTraceServer` (blocking) and
:class:`AsyncRemoteHTTPTraceServer` (asyncio), one implementation (see ``_core``)."""

from engine.client._async import AsyncRemoteHTTPTraceServer
from engine.client._batched import CallProcessor
from engine.client._sync import RemoteHTTPTraceServer

__all__ = ["AsyncRemoteHTTPTraceServer", "CallProcessor", "RemoteHTTPTraceServer"]
