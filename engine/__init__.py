"""engine: multiprocess, high-throughput ingestion of LLM and evaluation traces.

    import engine
    with engine.Engine(url="http://127.0.0.1:6345", project="entity/project") as eng:
        tracer = eng.producer()                  # picklable: hand it to worker processes
        with tracer.call("predict", inputs={"x": 1}) as call:
            call.output = 2
"""

from typing import TYPE_CHECKING

from engine.common._config import EngineConfig, load_config
from engine.common._errors import (
    Closed,
    ConfigError,
    EncodeError,
    EngineError,
    HTTPError,
    NoRingSlot,
    PayloadTooLarge,
    RingFull,
    SendError,
    SharedMemoryFull,
)
from engine.common._lazy import lazy_attributes
from engine.common._version import __version__
from engine.producer._engine import Engine
from engine.producer._nested import ParentCall, nested
from engine.producer._threads import ThreadPoolExecutor
from engine.producer._tracer import CallHandle, Tracer, current_call

if TYPE_CHECKING:
    from engine.client import AsyncRemoteHTTPTraceServer, RemoteHTTPTraceServer

# The HTTP client pulls in aiohttp (~0.2 s of CPU): imported on first use, so a process that
# only produces (every eval worker, every ingest worker) starts without it.
__getattr__, __dir__ = lazy_attributes(__name__, globals(), {
    "AsyncRemoteHTTPTraceServer": "engine.client", "RemoteHTTPTraceServer": "engine.client"})


__all__ = [
    "AsyncRemoteHTTPTraceServer",
    "CallHandle",
    "Closed",
    "ConfigError",
    "EncodeError",
    "Engine",
    "EngineConfig",
    "EngineError",
    "HTTPError",
    "NoRingSlot",
    "ParentCall",
    "PayloadTooLarge",
    "RemoteHTTPTraceServer",
    "RingFull",
    "SendError",
    "SharedMemoryFull",
    "ThreadPoolExecutor",
    "Tracer",
    "__version__",
    "current_call",
    "load_config",
    "nested",
]
