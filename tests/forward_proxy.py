"""A small real forward proxy on loopback for the proxy tests: ``CONNECT`` tunnels (https)
and absolute-URI requests (http), on its own event loop thread, port 0.

It resolves made-up names itself (``names``: ``{"engine-test.invalid": "127.0.0.1"}``), so a
delivery to such a name proves the proxy carried it. It keeps every request head it read
and every byte a client sent through it, so a test can say what the proxy saw in the clear.
With ``credentials`` ("user:pass") it answers 407 to a request without them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib

from tests.loop_thread import LoopThread

_HEAD_LIMIT = 64 << 10


class ForwardProxy(LoopThread):
    def __init__(self, names: dict[str, str] | None = None, credentials: str | None = None
                 ) -> None:
        super().__init__()
        self.names = names or {}
        self._expected = (None if credentials is None
                          else "Basic " + base64.b64encode(credentials.encode()).decode())
        self.heads: list[tuple[str, str, dict[str, str]]] = []  # (method, target, headers)
        self.client_bytes = bytearray()  # all a client sent through the proxy, tunnels included
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def methods(self) -> list[str]:
        return [method for method, _, _ in self.heads]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            await self._serve(head, reader, writer)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
            self._tasks.discard(asyncio.current_task())  # type: ignore[arg-type]

    async def _serve(self, head: bytes, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        self.client_bytes += head
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        self.heads.append((method, target, headers))
        if self._expected is not None and headers.get("Proxy-Authorization") != self._expected:
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")
            return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
        else:  # http://host:port/path: forward in origin form
            rest = target.split("://", 1)[1]
            netloc, _, path = rest.partition("/")
            host, _, port = netloc.rpartition(":") if ":" in netloc else (netloc, "", "80")
            kept = [f"{k}: {v}" for k, v in headers.items() if k.lower() != "proxy-authorization"]
            head = "\r\n".join([f"{method} /{path} {version}", *kept, "", ""]).encode("latin-1")
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.names.get(host, host), int(port))
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")
            return
        if method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            up_writer.write(head)
        await asyncio.gather(self._pipe(reader, up_writer, record=True),
                             self._pipe(up_reader, writer, record=False))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    record: bool) -> None:
        try:
            while data := await reader.read(_HEAD_LIMIT):
                if record:
                    self.client_bytes += data
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                writer.close()
