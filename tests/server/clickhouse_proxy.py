"""A reverse proxy in front of a ClickHouse server, as nginx or an ingress stands there: it
forwards every request, or (``mode``) answers ``502 Bad Gateway`` as nginx does while its
upstream restarts, or forwards each query with ``readonly=1`` as ClickHouse applies a
read-only user's profile, or ``hang``s: takes each request and answers nothing until the
proxy stops, as a ClickHouse that is stopped (SIGSTOP) or wedged (``arrived`` is set once
a request waits there), or (``no_ddl``) refuses each CREATE, ALTER, DROP … as ClickHouse
refuses a user granted only SELECT, INSERT and ALTER DELETE (ACCESS_DENIED; ClickHouse checks
the grant before IF NOT EXISTS, so also for what exists) and forwards the rest: chDB, behind
the local server, has no users to grant to; ``hang_delete`` holds only the ``DELETE``
statements (a lightweight delete that takes its time) and forwards the rest. A thread of the test process on a loopback port
of its own."""

from __future__ import annotations

import contextlib
import http.client
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import parse_qs, urlsplit

Mode = Literal["forward", "502", "readonly", "hang", "no_ddl", "hang_delete"]
_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}
_BAD_GATEWAY = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
_DDL = re.compile(r"\s*(CREATE|ALTER|DROP|RENAME|TRUNCATE)\s+(\w+)", re.IGNORECASE)


class ClickHouseProxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream_port: int, mode: Mode) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.upstream_port, self.mode = upstream_port, mode
        self.arrived, self.released = threading.Event(), threading.Event()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def store_url(self, database: str) -> str:
        return f"clickhouse://default@127.0.0.1:{self.port}/{database}"


class _Forward(BaseHTTPRequestHandler):
    server: ClickHouseProxy
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._handle()

    def do_POST(self) -> None:  # noqa: N802
        self._handle()

    def _handle(self) -> None:
        body = self._body()
        if self.server.mode == "hang" or (self.server.mode == "hang_delete"
                                          and self._statement(body).upper().startswith("DELETE")):
            self.server.arrived.set()
            self.server.released.wait(120)
            self.close_connection = True
            return
        if self.server.mode == "502":
            self._reply(502, {"Content-Type": "text/html"}, _BAD_GATEWAY)
            return
        if self.server.mode == "no_ddl" and (ddl := self._ddl(body)):
            denied = (f"Code: 497. DB::Exception: default: Not enough privileges. To execute this "
                      f"query, it's necessary to have the grant {ddl} ON *.*. (ACCESS_DENIED)")
            self._reply(500, {"X-ClickHouse-Exception-Code": "497"}, denied.encode())
            return
        path = self.path
        if self.server.mode == "readonly":
            path += ("&" if "?" in path else "?") + "readonly=1"
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
            upstream.request(self.command, path, body=body, headers=headers)
            answer = upstream.getresponse()
            self._reply(answer.status, dict(answer.getheaders()), answer.read())
        finally:
            upstream.close()

    def _statement(self, body: bytes) -> str:
        """The statement's start: the ``query`` parameter, else the body (clickhouse-connect's
        ``command``)."""
        query = parse_qs(urlsplit(self.path).query).get("query", [""])[0]
        return (query or body[:200].decode(errors="replace")).lstrip()

    def _ddl(self, body: bytes) -> str | None:
        """The grant a DDL statement needs (``CREATE TABLE``), or None."""
        match = _DDL.match(self._statement(body))
        return f"{match[1]} {match[2]}".upper() if match else None

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0], 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
            pass
        return b"".join(chunks)

    def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() not in _HOP_HEADERS:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:  # quiet: the test reads serve's log
        pass


@contextlib.contextmanager
def clickhouse_proxy(upstream_port: int, mode: Mode = "forward") -> Iterator[ClickHouseProxy]:
    """A running proxy to ClickHouse on ``upstream_port``; set ``.mode`` to change it."""
    proxy = ClickHouseProxy(upstream_port, mode)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.released.set()
        proxy.shutdown()
        proxy.server_close()
        thread.join(10)
