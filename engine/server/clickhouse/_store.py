"""The ClickHouse :class:`~engine.server._store.Store`: ``engine serve --store clickhouse://…``.

Every statement runs on the store's threads (each with its own ``clickhouse-connect``
client), never on the event loop. The server keeps no state of its own: whatever one
replica writes, any other replica on the same database reads, so several ``engine serve``
processes can stand behind one load balancer. Writes are ordered by ``version``, this
process's clock in nanoseconds, strictly increasing (:class:`VersionClock`).

Large call batches of the ingest routes are parsed by ClickHouse itself, and the batches
that arrive while an insert is running go in together as one ``INSERT`` (group commit,
:mod:`._group`); a batch lands whole or not at all. Small ones (a single ``/call/start``) use ClickHouse's
asynchronous inserts, which gather many small requests into one part server-side; the
store still waits for each to be written before it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

from engine.common._errors import EngineError
from engine.common._logging import level_from_env
from engine.server._calls_view import stored_bytes
from engine.server._group import Batch, GroupCommit
from engine.server._page_ends import PageEnds
from engine.server._rows import (
    RAW_COLUMNS,
    SELECT_COLUMNS,
    Complete,
    End,
    Start,
    row_to_call,
    take_rows,
)
from engine.server._store import (
    CallRow,
    CallsQuery,
    Doc,
    DocKind,
    DocsPage,
    DocsQuery,
    ObjectsQuery,
    ObjectVersion,
    StorageKind,
    Store,
    ThreadTurn,
)
from engine.server._store_trouble import StoreTrouble, is_trouble
from engine.server.clickhouse import _calls, _docs, _objects, _pages, _retention
from engine.server.clickhouse._connect import (
    PASSWORD_ENV,
    PASSWORD_FILE_ENV,
    PING_TIMEOUT_ENV,
    STATEMENT_TIMEOUT_ENV,
    Target,
    connect,
)
from engine.server.clickhouse._migrate import SchemaWatch, bundled, database_uuid, migrate
from engine.server.clickhouse._threads import DaemonThreads
from engine.wire.query import CallsFilter

T = TypeVar("T")
PAGE_ROWS = 1000  # calls handed to the route at a time while streaming
_SIZED = tuple(SELECT_COLUMNS.index(c) for c in RAW_COLUMNS)  # what makes a row big
# batches up to this many parts go through ClickHouse's asynchronous inserts
ASYNC_INSERT_MAX_ROWS = 64
_ASYNC_INSERT = {"async_insert": 1, "wait_for_async_insert": 1}
_THREADS = 4
_NOT_ENOUGH_SPACE = 243  # ClickHouse's error codes
_AUTHENTICATION_FAILED = 516
_READONLY = 164
_ACCESS_DENIED = 497
_DISK_FULL_TEXTS = ("NOT_ENOUGH_SPACE", "No space left on device")
_CLIP_CHARS = 300
# how long closing waits for statements still running (serve has already waited for its
# requests): a hung ClickHouse must not hold the stop for a statement's read timeout
CLOSE_WAIT_S = 2.0
_log = logging.getLogger("engine.server")
# clickhouse-connect's text for an HTTP error answer without a ClickHouse error code
_GATEWAY_STATUS = re.compile(r"\bHTTP status (502|503|504)\b")


class VersionClock:
    """Nanoseconds since the epoch, strictly increasing in this process (thread-safe)."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def take(self, n: int = 1) -> int:
        """The first of ``n`` consecutive versions reserved for the caller."""
        with self._lock:
            first = max(time.time_ns(), self._last + 1)
            self._last = first + n - 1
            return first


class ClickHouseStore(Store):
    kind = "clickhouse"
    # a retention pass's chunk reads the project's old parts again and is one DELETE: few
    # large ones (a DELETE holds up neither inserts nor reads)
    retention_chunk = 1_000_000

    def __init__(self, target: Target) -> None:
        self.target = target
        self._clock = VersionClock()
        self._page_ends = PageEnds()
        self._local = threading.local()
        self._pool = DaemonThreads(_THREADS, "engine-clickhouse")
        # clients of finished streams, for the next: a stream holds a client of its own
        # from its first page to its close (:class:`_Pages`)
        self._stream_clients: list[Any] = []
        # /ready's queries: a thread and a client of their own, with the short timeout
        self._prober = DaemonThreads(1, "engine-clickhouse-ping")
        # the retention passes' statements: a thread of their own, which the stop does not
        # wait for (nobody awaits a pass's DELETE, and the next pass deletes the same calls)
        self._background = DaemonThreads(1, "engine-clickhouse-retention")
        self._probe_client: Any = None
        self._ping: asyncio.Future[None] | None = None
        self._trouble = StoreTrouble()
        _quiet_driver()
        try:  # the first statement, bounded by the short timeout: is anyone there?
            _create_database(connect(target, None, target.ping_timeout_s), target)
            self.migrated = migrate(self._client())
            self._schema = SchemaWatch(bundled()[-1].version)
        except Exception as exc:
            for threads in (self._pool, self._prober, self._background):
                threads.shutdown(wait=False)
            why = _refusal(target, exc)
            if why is None:
                raise
            raise EngineError(why) from None
        self._group = GroupCommit(self._insert_group, shared=is_trouble)
        # embedded chDB reads a bulk insert from a file: private to this process
        self._spool = Path(target.path) / "insert-spool" if target.interface == "chdb" else Path()
        if target.interface == "chdb":
            self._spool.mkdir(mode=0o700, exist_ok=True)

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = connect(self.target, self.target.database)
        return client

    def _take_stream_client(self) -> Any:
        """A client no statement uses until :meth:`_give_back` (any store thread)."""
        try:
            return self._stream_clients.pop()
        except IndexError:
            return connect(self.target, self.target.database)

    def _give_back(self, client: Any, reusable: bool) -> None:
        if reusable and len(self._stream_clients) < _THREADS:
            self._stream_clients.append(client)
        else:
            with contextlib.suppress(Exception):
                client.close()

    async def _run(self, fn: Callable[..., T], *args: Any,
                   threads: DaemonThreads | None = None) -> T:
        def call() -> T:
            client = self._client()
            if (refusal := self._schema.refusal(client)) is not None:
                raise self._trouble.answer(503, refusal)
            return fn(client, *args)

        try:
            return await asyncio.get_running_loop().run_in_executor(threads or self._pool, call)
        except Exception as exc:
            error = self._answer_for(exc, self.target.statement_timeout_s, STATEMENT_TIMEOUT_ENV)
            if error is None:
                raise
            raise error from exc

    def _answer_for(self, exc: Exception, timeout_s: float, timeout_env: str) -> Any:
        """ClickHouse out of disk space, or its server out of reach (down, restarting, a
        network fault, silent for ``timeout_s``): an answer with the reason that asks to
        send again (see :mod:`engine.server._store_trouble`); None for any other error."""
        text = str(exc)
        where = self.target.describe()
        if _timed_out(exc):  # wedged, stopped, or busier than an operator allows
            return self._trouble.answer(503, f"the store's ClickHouse server cannot be reached: "
                                        f"it did not answer within {timeout_s:g} s ({where}); "
                                        "the request may not have been stored: send it again "
                                        "(a call sent twice is stored once); if ClickHouse is "
                                        f"only slow, give it longer with ${timeout_env}")
        if (getattr(exc, "code", None) == _NOT_ENOUGH_SPACE
                or any(mark in text for mark in _DISK_FULL_TEXTS)):
            return self._trouble.answer(507, f"the store's disk is full (ClickHouse, {where}: "
                                        f"{_clip(text)}); the request may not have been stored: "
                                        "send it again once there is room")
        if _unreachable(exc):
            return self._trouble.answer(503, f"the store's ClickHouse server cannot be reached "
                                        f"({where}: {_clip(text)}); the request may not have "
                                        "been stored: send it again (a call sent twice is "
                                        "stored once)")
        if getattr(exc, "code", None) == _AUTHENTICATION_FAILED:  # its password changed
            return self._trouble.answer(503, f"the store's ClickHouse refused user "
                                        f"{self.target.user!r} ({where}); nothing of this "
                                        "request was stored: send it again once engine serve "
                                        "has the new password (restart it)")
        return None

    # -- calls ---------------------------------------------------------------------------

    async def insert_calls(self, starts: list[Start], ends: list[End], completes: list[Complete]) -> None:
        count = len(starts) + len(ends) + len(completes)
        if count > ASYNC_INSERT_MAX_ROWS and _calls.bulk_ready(starts, ends, completes):
            await self._group.submit((starts, ends, completes), count)
        elif count:
            await self._run(self._insert_small, starts, ends, completes, self._clock.take(count))

    def _insert_small(self, client: Any, starts: list[Start], ends: list[End],
                      completes: list[Complete], first_version: int) -> None:  # fmt: skip
        body, rows = _calls.call_parts(starts, ends, completes, first_version)
        _insert_parts(client, body, _ASYNC_INSERT if rows <= ASYNC_INSERT_MAX_ROWS else None)

    async def _insert_group(self, batches: list[Batch]) -> None:
        await self._run(self._insert_bulk, batches)

    def _insert_bulk(self, client: Any, batches: list[Batch]) -> None:
        """Bulk batches as one INSERT, their parts in order, versions taken now (a batch
        waiting for its turn is ordered by when it is written, as any concurrent write)."""
        body = b"".join(_calls.bulk_parts(*batch) for batch in batches)
        parts = sum(len(kind) for batch in batches for kind in batch)
        self._bulk_insert(client, body, self._clock.take(parts))

    def _bulk_insert(self, client: Any, body: bytes, first_version: int) -> None:
        """One INSERT … SELECT that ClickHouse parses itself: over HTTP the body follows
        the statement (``input()``); embedded chDB reads it from a private file."""
        params = {"first_version": first_version}
        structure = _quote(_calls.BULK_STRUCTURE)
        if self.target.interface != "chdb":
            sql = _calls.bulk_insert(f"input({structure})") + f" FORMAT {_calls.BULK_FORMAT}"
            client.command(sql, parameters=params, data=body, settings=_calls.BULK_SETTINGS)
            return
        fd, name = tempfile.mkstemp(prefix="insert-", suffix=".jsonl", dir=self._spool)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body)
            source = f"file({_quote(name)}, '{_calls.BULK_FORMAT}', {structure})"
            client.command(_calls.bulk_insert(source), parameters=params,
                           settings=_calls.BULK_SETTINGS)  # fmt: skip
        finally:
            os.unlink(name)

    async def query_calls(self, query: CallsQuery) -> AsyncIterator[list[CallRow]]:
        """One streamed statement (:class:`_Pages`). A page by start time after one read
        recently (weave's ``get_calls`` pages) is read among the calls past its end while
        the project is unchanged (``_pages.read_on``); else one that ends near the newest
        or oldest start parts is read among their calls when they fill it (``check``)."""
        sql = _calls.CallsSql(query)  # InvalidQuery before anything runs
        end = self._page_ends.get(query) if sql.direction is not None else None
        read_on = None if end is None else await self._run(_pages.read_on, query, end)
        opened = None
        if read_on is not None and end is not None:
            opened, state = await self._opened(read_on[0], 0, read_on[1], end[2]), end[2]
        if opened is None:
            state = None
            if sql.direction is not None:
                state = await self._run(_pages.project_state, query.project_id)
            checked = await self._run(_narrow, sql, True) == "check"
            opened = await self._opened(sql, query.offset, checked)
            if opened is None:  # deleted or restarted calls among them: read it all
                opened = await self._opened(_calls.CallsSql(query), query.offset, False)
        assert opened is not None
        page, pages = opened
        count, last = 0, None
        try:
            while page is not None:
                count, last = count + len(page), page[-1]
                yield page
                page = await pages.next()
        finally:
            await pages.close()
        if state is not None:
            await self._run(_pages.remember, self._page_ends, query, count, last, state)

    async def _opened(self, sql: _calls.CallsSql, offset: int, must_fill: bool,
                      unchanged: tuple[int, int] | None = None
                      ) -> tuple[list[CallRow] | None, _Pages] | None:  # fmt: skip
        """The stream of ``sql`` from ``offset`` and its first page, or None (the stream
        closed) where that is not the answer: ``must_fill`` and the page does not come
        back full (counted when its first page is cut short), or the project's state no
        longer ``unchanged``. A page of small calls comes whole in its first page, so only
        pages of big calls cost the count; a page is never held whole to find out."""
        pages = _Pages(self, sql.select(sql.query.limit, offset), sql.params, self.chunk_bytes)
        try:
            first = await pages.next()
            right = True
            if must_fill and (first is None or len(first) < (sql.query.limit or 0)):
                right = first is not None and await self._run(_full_page, sql, offset)
            if right and unchanged is not None:
                right = await self._run(_pages.project_state, sql.query.project_id) == unchanged
        except BaseException:
            await pages.close()
            raise
        if not right:
            await pages.close()
            return None
        return first, pages

    async def count_calls(self, query: CallsQuery) -> int:
        sql = _calls.CallsSql(query)
        await self._run(_narrow, sql, False)
        count = max(0, await self._run(_scalar, sql.count(), sql.params) - query.offset)
        return count if query.limit is None else min(count, query.limit)

    async def project_call_counts(self) -> list[tuple[str, int]]:
        rows = await self._run(_rows, _calls.PROJECT_COUNTS_SQL, {})
        return [(project_id, int(n)) for project_id, n in rows]

    async def trace_storage_bytes(self, project_id: str, trace_ids: list[str]) -> dict[str, int]:
        """Summed over the traces' calls as read (only asked for by include_total_storage_size)."""
        sizes: dict[str, int] = {}
        if not trace_ids:  # an empty trace_ids filter would be every call
            return sizes
        query = CallsQuery(project_id=project_id, filter=CallsFilter(trace_ids=trace_ids))
        async for page in self.query_calls(query):
            for call in page:
                sizes[call["trace_id"]] = sizes.get(call["trace_id"], 0) + stored_bytes(call)
        return sizes

    async def delete_calls(self, project_id: str, call_ids: list[str]) -> list[str]:
        return await self._run(self._delete_calls, project_id, call_ids)

    def _delete_calls(self, client: Any, project_id: str, call_ids: list[str]) -> list[str]:
        """The calls and every visible call below them (parent links), as weave deletes."""
        if not call_ids:  # an empty call_ids filter would be every call
            return []
        sql, params = _calls.visible_sql(project_id, list(dict.fromkeys(call_ids)))
        doomed = dict.fromkeys(r[0] for r in client.query(sql, parameters=params).result_rows)
        frontier = list(doomed)
        while frontier:
            sql, params = _calls.subtree_sql(project_id, frontier)
            found = [r[0] for r in client.query(sql, parameters=params).result_rows]
            frontier = [i for i in found if i not in doomed]
            doomed.update(dict.fromkeys(frontier))
        if doomed:
            body = _calls.delete_parts(project_id, doomed, self._clock.take(len(doomed)))
            _insert_parts(client, body, None)
        return list(doomed)

    async def object_projects(self) -> list[tuple[str]]:
        rows = await self._run(_rows, "SELECT DISTINCT project_id FROM obj_versions FINAL "
                                      "WHERE deleted_at_us IS NULL ORDER BY project_id", {})
        return [(project_id,) for (project_id,) in rows]

    async def store_id(self) -> str | None:
        return await self._run(database_uuid)

    async def retention_days(self, project_id: str) -> int | None:
        return await self._run(_retention.retention_days, project_id)

    async def set_retention_days(self, project_id: str, days: int | None,
                                 user_id: str | None) -> None:
        await self._run(_retention.set_retention_days, project_id, days,
                        time.time_ns() // 1000, user_id)

    async def retained_projects(self) -> list[tuple[str, int]]:
        return await self._run(_retention.retained_projects)

    async def delete_calls_before(self, project_id: str, cutoff_us: int, limit: int) -> int:
        return await self._run(_retention.delete_before, project_id, cutoff_us, limit,
                               threads=self._background)

    async def set_call_display_name(self, project_id: str, call_id: str, name: str | None) -> bool:
        return await self._run(self._rename, project_id, call_id, name)

    def _rename(self, client: Any, project_id: str, call_id: str, name: str | None) -> bool:
        sql, params = _calls.visible_sql(project_id, [call_id])
        if not client.query(sql, parameters=params).result_rows:
            return False
        _insert_parts(client, _calls.rename_part(project_id, call_id, name, self._clock.take()), None)
        return True

    async def thread_turns(self, project_id: str, thread_ids: list[str] | None,
                           max_turns: int) -> list[ThreadTurn]:  # fmt: skip
        sql, params = _calls.thread_turns_sql(project_id, thread_ids, max_turns)
        rows = await self._run(_rows, sql, params)
        return [ThreadTurn(*row) for row in rows]

    # -- objects -------------------------------------------------------------------------

    async def put_object(self, version: ObjectVersion) -> ObjectVersion:
        return await self._run(_objects.put, version, self._clock.take(2))

    async def read_object(self, project_id: str, object_id: str, version: str, *,
                          include_deleted: bool = False) -> ObjectVersion | None:  # fmt: skip
        return await self._run(_objects.read, project_id, object_id, version, include_deleted)

    async def query_objects(self, query: ObjectsQuery) -> list[ObjectVersion]:
        return await self._run(_objects.query, query)

    async def delete_objects(self, project_id: str, object_id: str, versions: list[str] | None,
                             now_us: int) -> list[ObjectVersion]:  # fmt: skip
        return await self._run(_objects.delete, project_id, object_id, versions, now_us,
                               self._clock.take())  # fmt: skip

    async def set_aliases(self, project_id: str, object_id: str, digest: str,
                          aliases: list[str]) -> bool:  # fmt: skip
        return await self._run(self._labelled, _objects.set_aliases, project_id, object_id,
                               digest, aliases)  # fmt: skip

    def _labelled(self, client: Any, label: Callable[..., None], project_id: str, object_id: str,
                  digest: str, names: list[str], *extra: Any) -> bool:  # fmt: skip
        if not _objects.live(client, project_id, object_id, digest):
            return False
        label(client, project_id, object_id, digest, names, self._clock.take(), *extra)
        return True

    async def remove_aliases(self, project_id: str, object_id: str, aliases: list[str]) -> None:
        await self._run(_objects.remove_aliases, project_id, object_id, aliases, self._clock.take())

    async def add_tags(self, project_id: str, object_id: str, digest: str, tags: list[str]) -> bool:
        return await self._run(self._labelled, _objects.set_tags, project_id, object_id, digest,
                               tags, 0)  # fmt: skip

    async def remove_tags(self, project_id: str, object_id: str, digest: str,
                          tags: list[str]) -> None:  # fmt: skip
        await self._run(_objects.set_tags, project_id, object_id, digest, tags,
                        self._clock.take(), 1)  # fmt: skip

    async def label_names(self, project_id: str, what: Literal["tag", "alias"]) -> list[str]:
        return await self._run(_objects.label_names, project_id, what)

    async def object_labels(self, project_id: str, versions: list[tuple[str, str]]
                            ) -> dict[tuple[str, str], tuple[list[str], list[str]]]:  # fmt: skip
        return await self._run(_objects.labels, project_id, versions)

    # -- tables and files ----------------------------------------------------------------

    async def put_table(self, project_id: str, digest: str, row_digests: list[str],
                        new_rows: list[tuple[str, str]]) -> None:  # fmt: skip
        await self._run(_docs.put_table, project_id, digest, row_digests, new_rows)

    async def table_row_digests(self, project_id: str, digest: str) -> list[str] | None:
        return await self._run(_docs.table_row_digests, project_id, digest)

    async def table_rows(self, project_id: str, row_digests: list[str]) -> dict[str, str]:
        return await self._run(_docs.table_rows, project_id, row_digests)

    async def put_file(self, project_id: str, digest: str, content: bytes) -> None:
        await self._run(_docs.put_file, project_id, digest, content)

    async def read_file(self, project_id: str, digest: str) -> bytes | None:
        return await self._run(_docs.read_file, project_id, digest)

    # -- feedback and costs --------------------------------------------------------------

    async def put_docs(self, kind: DocKind, docs: list[Doc]) -> list[Doc]:
        return await self._run(_docs.put_docs, kind, docs, self._clock.take(len(docs)))

    async def query_docs(self, kind: DocKind, query: DocsQuery) -> DocsPage:
        return await self._run(_docs.query_docs, kind, query)

    async def delete_docs(self, kind: DocKind, project_id: str, ids: list[str]) -> int:
        return await self._run(_docs.delete_docs, kind, project_id, ids, self._clock.take())

    async def replace_doc(self, kind: DocKind, old_id: str, new: Doc) -> bool:
        return await self._run(_docs.replace_doc, kind, old_id, new, self._clock.take(2))

    # -- project -------------------------------------------------------------------------

    async def storage_bytes(self, project_id: str, kind: StorageKind) -> int:
        if kind == "trace":
            sql, params = _calls.storage_sql(project_id)
            return int(await self._run(_scalar, sql, params) or 0)
        return await self._run(_docs.storage_bytes, kind, project_id)

    async def ping(self) -> None:
        """``/ready``'s query, on the store's probe thread with the short timeout
        (``Target.ping_timeout_s``), so a ClickHouse that never answers is said within it
        and probes do not pile up on the store's threads: probes that come while one is
        out share its answer."""
        if self._ping is None or self._ping.done():
            self._ping = asyncio.ensure_future(self._probe())
        await asyncio.shield(self._ping)

    async def _probe(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._prober, self._probe_once)
        except Exception as exc:
            error = self._answer_for(exc, self.target.ping_timeout_s, PING_TIMEOUT_ENV)
            if error is None:
                raise
            raise error from exc

    def _probe_once(self) -> None:
        if self._probe_client is None:
            self._probe_client = connect(self.target, self.target.database,
                                         self.target.ping_timeout_s)  # fmt: skip
        self._probe_client.query("SELECT 1")
        if (refusal := self._schema.refusal(self._probe_client)) is not None:
            raise self._trouble.answer(503, refusal)  # a newer server migrated the database

    async def close(self) -> None:
        """Wait for the inserts and statements still running up to :data:`CLOSE_WAIT_S`,
        then leave them (see :mod:`._threads`). A retention pass's statement is left at once:
        its answer is awaited by nobody once the pass is cancelled, and a lightweight DELETE
        takes seconds on a loaded ClickHouse (2-2.4 s under the team load: each SIGTERM
        during one stopped 2 s later)."""
        self._background.shutdown(wait=False)
        deadline = time.monotonic() + CLOSE_WAIT_S
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._group.close(), CLOSE_WAIT_S)
        busy = sum(threads.shutdown(wait_s=max(0.0, deadline - time.monotonic()))
                   for threads in (self._pool, self._prober))  # fmt: skip
        if busy:
            _log.warning("engine serve: %d ClickHouse statement(s) still unanswered %.0f s after "
                         "the stop (%s); not waiting for them", busy, CLOSE_WAIT_S,
                         self.target.describe())


def _quiet_driver() -> None:
    """clickhouse-connect logs a warning per failed request ("Unexpected Http Driver
    Exception", with its traceback): thousands during an outage, beside the store's one
    line every 30 s that says the same (:class:`StoreTrouble`), and one before the start's
    own error. Its errors stay; its warnings show only at debug (``ENGINE_LOG_LEVEL=debug``
    or engine's logger at DEBUG)."""
    if level_from_env() != "DEBUG" and not _log.isEnabledFor(logging.DEBUG):
        logging.getLogger("clickhouse_connect").setLevel(logging.ERROR)


def _create_database(client: Any, target: Target) -> None:
    """Only where it is missing: ClickHouse checks the CREATE DATABASE grant even for IF NOT
    EXISTS on one that exists, and the run-time user may lack it (docs/clickhouse.md). A
    read-only user is refused here, as that statement would have refused it."""
    readonly = client.query("SELECT getSetting('readonly')").result_rows[0][0]
    if int(readonly):
        raise EngineError(_read_only(target, f"its setting readonly={readonly}"))
    found = client.query("SELECT 1 FROM system.databases WHERE name = {db:String}",
                         parameters={"db": target.database}).result_rows  # fmt: skip
    if not found:
        client.command(f"CREATE DATABASE IF NOT EXISTS `{target.database}`")


def _read_only(target: Target, why: str) -> str:
    return (f"ClickHouse user {target.user!r} is read-only ({target.describe()}: {why}); engine "
            "serve creates its tables and writes calls: give --store a user that may write")


def _refusal(target: Target, exc: Exception) -> str | None:
    """Why a store could not be opened, and what to do, in a line; None for an error that
    is not one of these (a bug: the CLI says "unexpected")."""
    where, code, text = target.describe(), getattr(exc, "code", None), _clip(str(exc))
    if _timed_out(exc):
        return (f"the store's ClickHouse server did not answer within {target.ping_timeout_s:g} "
                f"s ({where}); is it stopped or overloaded? check it, or give it longer with "
                f"${PING_TIMEOUT_ENV}")
    if _unreachable(exc):
        return (f"the store's ClickHouse server cannot be reached ({where}: {text}); start it, "
                "or check --store and the network")
    if target.interface == "chdb" and not isinstance(exc, EngineError):
        return f"cannot open the embedded ClickHouse (chdb) at {target.path}: {text}"
    if code == _AUTHENTICATION_FAILED:
        return (f"ClickHouse refused user {target.user!r} ({where}): check ${PASSWORD_ENV}, "
                f"${PASSWORD_FILE_ENV} or --clickhouse-password-file, and the user in --store")
    if code == _READONLY:
        return _read_only(target, text)
    if code == _ACCESS_DENIED:
        return (f"ClickHouse user {target.user!r} lacks a right engine serve needs ({where}: "
                f"{text}); GRANT it CREATE DATABASE, and CREATE TABLE, CREATE VIEW, DROP VIEW, "
                f"ALTER DELETE, INSERT, SELECT on `{target.database}`.*, or start engine serve once as a user that has them (it "
                "creates and migrates the schema; then SELECT, INSERT, ALTER DELETE suffice)")
    return None


def _unreachable(exc: Exception) -> bool:
    """The HTTP client gave up reaching the server (refused, reset, timed out, or it kept
    answering 503/504): ``clickhouse-connect``'s OperationalError; or a proxy before it
    answered 502/503/504 without a ClickHouse error code (nginx while ClickHouse restarts),
    which clickhouse-connect raises as a plain DatabaseError. A ClickHouse error that the
    server answered (a bad query, a missing table) is not that: a DatabaseError with a code."""
    from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

    if isinstance(exc, OperationalError):
        return True
    return (isinstance(exc, DatabaseError) and getattr(exc, "code", None) is None
            and _GATEWAY_STATUS.search(str(exc)) is not None)  # fmt: skip


def _timed_out(exc: BaseException) -> bool:
    """The server took the connection but did not answer in time (the read timed out;
    not urllib3's connect errors, which subclass its timeouts)."""
    from urllib3.exceptions import ReadTimeoutError

    seen: BaseException | None = exc
    for _ in range(8):  # the chain of causes, bounded
        if seen is None:
            return False
        if isinstance(seen, ReadTimeoutError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _clip(text: str) -> str:
    return text if len(text) <= _CLIP_CHARS else text[: _CLIP_CHARS - 1] + "…"


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _insert_parts(client: Any, body: bytes, settings: dict[str, Any] | None) -> None:
    client.raw_insert(_calls.PARTS_TABLE, list(_calls.PART_COLUMNS), insert_block=body,
                      fmt="JSONCompactEachRow", settings=settings)  # fmt: skip


def _rows(client: Any, sql: str, params: dict[str, Any]) -> list[tuple]:
    return client.query(sql, parameters=params).result_rows


def _scalar(client: Any, sql: str, params: dict[str, Any]) -> Any:
    return client.query(sql, parameters=params).result_rows[0][0]


def _narrow(client: Any, sql: _calls.CallsSql, page: bool) -> str:
    """Narrow ``sql`` to the calls that can match where they are few
    (:meth:`CallsSql.candidates`): ``exact`` (the answer is the same), ``check`` (a page by
    start time read from the calls with the nearest start parts: right only if it comes
    back full) or ``none`` (not narrowed)."""
    candidates = sql.candidates(page)
    if candidates is None:
        return "none"
    rows = client.query(candidates, parameters=sql.params).result_rows
    if page and sql.by_start is not None:
        return sql.narrow_to_starts(rows, sql.query.limit + sql.query.offset)
    if len(rows) > _calls.CANDIDATES_MAX:
        return "none"
    sql.narrow([row[0] for row in rows])
    return "exact"


def _full_page(client: Any, sql: _calls.CallsSql, offset: int) -> bool:
    """Whether the narrowed page of ``sql`` from ``offset`` comes back full, counted."""
    return _scalar(client, sql.count(), sql.params) >= offset + (sql.query.limit or 0)


class _Pages:
    """One streamed query, read a block at a time on the store's threads and cut into
    pages of at most :data:`PAGE_ROWS` calls, ending early once their JSON passes
    ``max_bytes`` (rows become calls there too, off the event loop).

    The stream runs on a client of its own from its first page to its close: a chDB
    connection streaming a result runs nothing else until the stream closes, and a store
    thread's client runs every other request's statements meanwhile (between two pages,
    and the checks :meth:`ClickHouseStore._opened` makes with the first page in hand)."""

    def __init__(self, store: ClickHouseStore, sql: str, params: dict[str, Any],
                 max_bytes: int) -> None:  # fmt: skip
        self._store, self._sql, self._params = store, sql, params
        self._max_bytes = max_bytes
        self._client: Any = None
        self._stream: Any = None
        self._pages: Iterator[list[CallRow]] | None = None

    def _open(self) -> None:
        self._client = self._store._take_stream_client()
        self._stream = self._client.query_row_block_stream(self._sql, parameters=self._params)
        self._pages = self._cut(self._stream.__enter__())

    def _cut(self, blocks: Any) -> Iterator[list[CallRow]]:
        for block in blocks:
            rows, done = iter(block), False
            while not done:
                taken, done = take_rows(rows, PAGE_ROWS, self._max_bytes, _SIZED)
                if taken:
                    yield [row_to_call(r) for r in taken]

    def _next(self, _thread_client: Any) -> list[CallRow] | None:
        if self._pages is None:
            self._open()
        assert self._pages is not None
        return next(self._pages, None)

    async def next(self) -> list[CallRow] | None:
        return await self._store._run(self._next)

    def _close(self, _thread_client: Any) -> None:
        client, stream, self._client, self._stream = self._client, self._stream, None, None
        if client is None:
            return
        closed = False
        try:
            if stream is not None:
                stream.__exit__(None, None, None)
            closed = True
        finally:
            self._store._give_back(client, reusable=closed)

    async def close(self) -> None:
        if self._client is not None:  # even where the schema now refuses statements
            await asyncio.get_running_loop().run_in_executor(self._store._pool, self._close, None)
