"""A local ClickHouse for development and tests: the chDB engine behind ClickHouse's HTTP interface.

Why this exists: no package registry this project may use ships a current
``clickhouse-server`` binary (Debian's is 18.16 from 2018; PyPI's ``clickhousectl``
downloads one at run time). PyPI's ``chdb-core`` is ClickHouse itself (26.x) compiled
as a library, in-process only: its ``SYSTEM START LISTEN`` answers "start_servers_callback
is not set", and one database folder can be opened by one process only. So this module
owns the folder in one process and answers the subset of ClickHouse's HTTP interface that
``clickhouse-connect`` speaks, so that any number of ``engine serve`` processes share one
ClickHouse database exactly as they would share a real server:

- ``POST /`` (or ``GET``) with the SQL in the ``query`` parameter (then the body is the
  data of an ``INSERT … FORMAT F``) or in the body; ``database``, ``default_format``,
  ``param_<name>`` (query parameters), every other parameter is a setting; bodies in
  gzip, deflate, zstd or lz4 (frame); or the query and its parameters as
  ``multipart/form-data`` fields (what clickhouse-connect sends once they pass 4 KiB);
  answers streamed as the engine produces them.
- ``GET /ping`` answers ``Ok.``; errors answer 500 (401 for bad credentials) with
  ClickHouse's ``Code: N. DB::Exception: …`` text and ``X-ClickHouse-Exception-Code``.
- One user, whose password comes from ``$ENGINE_CLICKHOUSE_PASSWORD`` or
  ``--password-file`` (never argv); without one, no password is asked (loopback only).

Every statement is executed by ClickHouse's own engine; this module parses nothing but
the ``INSERT … FORMAT`` head, whose data it hands to ClickHouse's ``file()`` reader
(``INSERT … SELECT … FROM input('structure') FORMAT F``: ``input`` reads that file).

Run: ``python -m engine.server.clickhouse.local_server --path DIR --port 8123``; the
line ``listening on http://HOST:PORT`` says it is ready.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import hmac
import os
import re
import signal
import tempfile
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp import web

PASSWORD_ENV = "ENGINE_CLICKHOUSE_PASSWORD"
# parameters that steer the HTTP exchange itself, never settings of the query
_TRANSPORT_PARAMS = frozenset({
    "query", "database", "default_format", "user", "password", "session_id", "session_timeout",
    "session_check", "query_id", "compress", "decompress", "buffer_size", "wait_end_of_query",
    "quota_key", "client_protocol_version", "http_response_buffer_size",
})  # fmt: skip
# settings that only mean something to a real HTTP server
_IGNORED_SETTINGS = frozenset({
    "enable_http_compression", "send_progress_in_http_headers",
    "http_headers_progress_interval_ms", "http_zlib_compression_level",
})  # fmt: skip
_INSERT_HEAD = re.compile(
    r"^\s*(?P<head>INSERT\s+INTO\s+.+?)\s+FORMAT\s+(?P<fmt>\w+)\s*$", re.IGNORECASE | re.DOTALL
)
# an INSERT whose data follows its head in the body (``INSERT … FORMAT F\n<data>``)
_INSERT_IN_BODY = re.compile(rb"^\s*(INSERT\s+INTO\s.*?\sFORMAT\s+\w+)[ \t]*\r?\n", re.IGNORECASE | re.DOTALL)
# the input() table function of an INSERT … SELECT: its data is the request body
_INPUT = re.compile(r"\binput\(", re.IGNORECASE)
_CODE = re.compile(r"Code: (\d+)")
# chDB streams the answers of queries only; any other statement answers in one piece
_STREAMABLE = re.compile(r"^[\s(]*(SELECT|WITH)\b", re.IGNORECASE)
_AUTH_FAILED = 516
_MAX_BODY_BYTES = 1 << 30


_CANNOT_WRITE = 75  # ClickHouse's CANNOT_WRITE_TO_FILE_DESCRIPTOR


class QueryFailed(Exception):
    """ClickHouse refused a statement; ``text`` is its ``Code: N. DB::Exception: …`` message."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        match = _CODE.search(text)
        self.code = int(match.group(1)) if match else 1000


def _write_failed(path: object, exc: OSError) -> QueryFailed:
    """A failed write of the insert's data (a full disk), in ClickHouse's words for it."""
    return QueryFailed(f"Code: {_CANNOT_WRITE}. DB::Exception: Cannot write to file {path}, "
                       f"errno: {exc.errno}, strerror: {exc.strerror}. "
                       "(CANNOT_WRITE_TO_FILE_DESCRIPTOR)")


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _decode_body(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompress(body, max_output_size=_MAX_BODY_BYTES)
    if encoding == "lz4":
        import lz4.frame

        return lz4.frame.decompress(body)
    raise QueryFailed(f"Code: 36. DB::Exception: Unknown Content-Encoding {encoding!r}. (BAD_ARGUMENTS)")


class Engine:
    """The chDB engine on one database folder; each request gets a connection of its own."""

    def __init__(self, path: Path, threads: int = 8) -> None:
        import chdb  # imported here: the rest of engine never needs the 500 MB library

        self._chdb = chdb
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._uri = f"file:{path}"
        self._keep = chdb.connect(self._uri)  # the engine lives while one connection is open
        self._spool = Path(tempfile.mkdtemp(prefix="insert-", dir=path))
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="chdb")

    def run(self, request: Request, emit: Callable[[bytes], None]) -> None:
        """Execute one request on this thread, passing the answer to ``emit`` in chunks."""
        conn = self._chdb.connect(self._uri)
        try:
            for sql in request.preamble():
                self._query(conn, sql, "TabSeparated")
            if request.data is not None:
                self._insert(conn, request)
            elif _STREAMABLE.match(request.sql):
                self._stream(conn, request, emit)
            else:
                emit(self._query(conn, request.sql, request.fmt, request.params))
        finally:
            conn.close()

    def _query(self, conn: Any, sql: str, fmt: str, params: dict[str, str] | None = None) -> bytes:
        try:
            return conn.query(sql, fmt, params=params or {}).bytes()
        except Exception as exc:  # chdb raises its own error types with ClickHouse's text
            raise QueryFailed(str(exc)) from None

    def _stream(self, conn: Any, request: Request, emit: Callable[[bytes], None]) -> None:
        try:
            for chunk in conn.send_query(request.sql, request.fmt, params=request.params):
                data = chunk.bytes()
                if data:
                    emit(data)
        except Exception as exc:
            raise QueryFailed(str(exc)) from None

    def _insert(self, conn: Any, request: Request) -> None:
        match = _INSERT_HEAD.match(request.sql)
        if match is None:
            raise QueryFailed(
                "Code: 62. DB::Exception: a request body with a query parameter must be the "
                "data of an INSERT … FORMAT statement. (SYNTAX_ERROR)"
            )
        try:
            fd, name = tempfile.mkstemp(dir=self._spool)
        except OSError as exc:
            raise _write_failed(self._spool, exc) from None
        try:
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(request.data or b"")
            except OSError as exc:  # as ClickHouse answers a write it cannot make
                raise _write_failed(name, exc) from None
            source = f"file({_quote(name)}, {_quote(match['fmt'])}"
            if _INPUT.search(match["head"]):  # INSERT … SELECT … FROM input('structure')
                sql = _INPUT.sub(lambda _: source + ", ", match["head"], count=1)
            else:
                sql = f"{match['head']} SELECT * FROM {source})"
            self._query(conn, sql, "TabSeparated", request.params)
        finally:
            os.unlink(name)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self._keep.close()


class Request:
    """What one HTTP request asks: the SQL, its data, database, format, parameters, settings."""

    def __init__(self, query: Any, body: bytes) -> None:
        self.sql: str = query.get("query", "")
        self.data: bytes | None = body if "query" in query else None
        if self.data is None:
            head = _INSERT_IN_BODY.match(body[:65536])
            if head:
                self.sql, self.data = head[1].decode(), body[head.end():]
            else:
                self.sql = body.decode()
        self.database: str | None = query.get("database")
        self.fmt: str = query.get("default_format") or "TabSeparated"
        self.params = {k[6:]: v for k, v in query.items() if k.startswith("param_")}
        self.settings = {
            k: v for k, v in query.items()
            if not k.startswith("param_") and k not in _TRANSPORT_PARAMS
            and k not in _IGNORED_SETTINGS
        }  # fmt: skip

    def preamble(self) -> Iterator[str]:
        if self.database:
            yield f"USE `{self.database.replace('`', '')}`"
        for name, value in self.settings.items():
            if not re.fullmatch(r"\w+", name):
                raise QueryFailed(f"Code: 115. DB::Exception: Unknown setting {name!r}. (UNKNOWN_SETTING)")
            yield f"SET {name} = {_quote(value)}"


def _credentials(request: web.Request) -> tuple[str, str]:
    header = request.headers.get("Authorization", "")
    if header.startswith("Basic "):
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return user, password
    user = request.headers.get("X-ClickHouse-User") or request.query.get("user") or "default"
    password = request.headers.get("X-ClickHouse-Key") or request.query.get("password") or ""
    return user, password


def _error(status: int, text: str, code: int) -> web.Response:
    return web.Response(
        status=status, text=text.rstrip() + "\n",
        headers={"X-ClickHouse-Exception-Code": str(code)},
    )  # fmt: skip


class LocalServer:
    """The aiohttp side: checks credentials, decodes the body, runs the request on a thread."""

    def __init__(self, engine: Engine, user: str, password: str) -> None:
        self.engine = engine
        self._user, self._password = user, password

    def app(self) -> web.Application:
        app = web.Application(client_max_size=_MAX_BODY_BYTES)
        app.router.add_get("/ping", lambda _: web.Response(text="Ok.\n"))
        app.router.add_route("*", "/", self.handle)
        return app

    def _authorised(self, request: web.Request) -> bool:
        user, password = _credentials(request)
        return user == self._user and hmac.compare_digest(password, self._password)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            return _error(401, f"Code: {_AUTH_FAILED}. DB::Exception: Authentication failed: "
                          "password is incorrect, or there is no such user. (AUTHENTICATION_FAILED)",
                          _AUTH_FAILED)  # fmt: skip
        try:
            if request.content_type == "multipart/form-data":
                # clickhouse-connect sends the query and its parameters as form fields once
                # the parameters pass 4 KiB (ClickHouse's HTTP interface takes both)
                fields = dict(request.query)
                async for part in await request.multipart():  # any number (post(): 1,000)
                    fields[part.name] = await part.text()
                asked = Request(fields, b"")
                asked.data = None  # the query is a field: no data follows it
                return await self._answer(request, asked)
            body = _decode_body(await request.read(), request.headers.get("Content-Encoding", ""))
            return await self._answer(request, Request(request.query, body))
        except QueryFailed as exc:
            return _error(500, str(exc), exc.code)

    async def _answer(self, http: web.Request, request: Request) -> web.StreamResponse:
        """Stream the engine's chunks; the headers go out with the first one, so an error
        before any data still becomes a clean 500."""
        loop = asyncio.get_running_loop()
        response = web.StreamResponse(headers={
            "Content-Type": "application/octet-stream", "X-ClickHouse-Format": request.fmt,
            "X-ClickHouse-Timezone": "UTC", "X-ClickHouse-Summary": "{}",
        })  # fmt: skip

        async def write(chunk: bytes) -> None:
            if not response.prepared:
                await response.prepare(http)
            await response.write(chunk)

        def emit(chunk: bytes) -> None:
            asyncio.run_coroutine_threadsafe(write(chunk), loop).result()

        await loop.run_in_executor(self.engine.pool, self.engine.run, request, emit)
        if not response.prepared:
            await response.prepare(http)
        await response.write_eof()
        return response


def _password(args: argparse.Namespace) -> str:
    if args.password_file:
        return Path(args.password_file).read_text().strip()
    return os.environ.get(PASSWORD_ENV, "")


async def _serve(args: argparse.Namespace) -> None:
    os.environ["TZ"] = "UTC"  # DateTime values without a zone are read and written as UTC
    engine = Engine(Path(args.path), threads=args.threads)
    server = LocalServer(engine, args.user, _password(args))
    runner = web.AppRunner(server.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print(f"clickhouse local server: listening on http://{host}:{port} (chdb, {args.path})",
          flush=True)  # fmt: skip
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        engine.close()
    print("clickhouse local server: stopped", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m engine.server.clickhouse.local_server",
        description="Serve a chDB database folder over ClickHouse's HTTP interface.",
    )
    parser.add_argument("--path", required=True, help="database folder (created, owner-only)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8123, help="port; 0 picks a free one")
    parser.add_argument("--user", default="default", help="the one user name (default 'default')")
    parser.add_argument("--password-file", help=f"file holding the password (else ${PASSWORD_ENV})")
    parser.add_argument("--threads", type=int, default=8, help="requests executed at once")
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
