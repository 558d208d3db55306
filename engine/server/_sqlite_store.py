"""The SQLite :class:`~engine.server._store.Store`: one file in WAL mode, a writer thread
and reader threads (:mod:`engine.server._sqlite_db`); statements in ``_sqlite_calls``,
``_sqlite_objects`` and ``_sqlite_docs``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec

from engine.server import _sqlite_calls as calls
from engine.server import _sqlite_docs as docs
from engine.server import _sqlite_objects as objects
from engine.server._calls_sql import Selection
from engine.server._group import Batch, GroupCommit
from engine.server._page_ends import PageEnds
from engine.server._rows import RAW_COLUMNS, SELECT_COLUMNS, Complete, End, Start, rows_to_calls
from engine.server._sqlite_db import Database
from engine.server._sqlite_pages import pageable, read_on_sql
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
from engine.server._store_trouble import is_trouble

_json = msgspec.json.Encoder()
CHUNK_ROWS = 1000  # rows handed over at a time while streaming
# the first chunk is small: its rows leave while the next are being read
FIRST_CHUNK_ROWS = 100
_ID_AT, _STARTED_AT = SELECT_COLUMNS.index("id"), SELECT_COLUMNS.index("started_at_us")
_SIZED = tuple(SELECT_COLUMNS.index(c) for c in RAW_COLUMNS)


class SQLiteStore(Store):
    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = Database(path)
        self._page_ends = PageEnds()
        # requests that arrive while a transaction is being written go in together
        self._group = GroupCommit(self._insert_group, lanes=1, shared=is_trouble)
        self.pages_read_on = 0  # pages read on from where a recent one ended

    # -- calls ---------------------------------------------------------------------------

    async def insert_calls(self, starts: list[Start], ends: list[End], completes: list[Complete]) -> None:
        count = len(starts) + len(ends) + len(completes)
        if count:
            await self._group.submit((starts, ends, completes), count)

    async def _insert_group(self, batches: list[Batch]) -> None:
        await self._db.write(calls.q_insert_batches, batches)

    async def query_calls(self, query: CallsQuery) -> AsyncIterator[list[CallRow]]:
        """One statement read to its end (``Database.stream``), in chunks of at most
        ``CHUNK_ROWS`` rows, ending early past ``chunk_bytes`` of JSON. A page by start time at the
        offset where a recent one ended reads on from there (``_sqlite_pages``) while the
        database is unchanged."""
        selection = Selection(query)  # InvalidQuery first
        if selection.op_filter is not None:  # rare or frequent op: see Selection
            sql, params = selection.op_rows_sql(query.project_id)
            ((op_rows,),) = await self._db.read(calls.q_fetchall, sql, params)
            selection = Selection(query, op_rows=op_rows)
        end = self._page_ends.get(query) if pageable(query) else None
        if end is not None and await self._db.data_version() == end[2]:
            chunks = self._chunks(query, *read_on_sql(selection, query, end), end[2])
            async with contextlib.aclosing(chunks):
                first = await anext(chunks, None)
                # the stream's snapshot began before this: unchanged then, it is the page
                if await self._db.data_version() == end[2]:
                    self.pages_read_on += 1
                    if first is not None:
                        yield first
                        async for page in chunks:
                            yield page
                    return
        version = await self._db.data_version() if pageable(query) else None
        sql, params = selection.select(query.limit, query.offset)
        async with contextlib.aclosing(self._chunks(query, sql, params, version)) as chunks:
            async for page in chunks:
                yield page

    async def _chunks(self, query: CallsQuery, sql: str, params: Sequence[Any],
                      version: int | None) -> AsyncIterator[list[CallRow]]:  # fmt: skip
        """The calls of one statement a chunk at a time; where a full page ended is
        remembered (``version``: the data's when the read began; None: not a page)."""
        first_rows = FIRST_CHUNK_ROWS
        if query.limit is not None and query.limit <= FIRST_CHUNK_ROWS:
            first_rows = query.limit + 1  # fewer rows than asked for: done in one hand-off
        count, last = 0, None
        stream = self._db.stream(sql, params, first_rows, CHUNK_ROWS, self.chunk_bytes, _SIZED)
        async with contextlib.aclosing(stream) as rows_chunks:
            async for rows in rows_chunks:
                count, last = count + len(rows), rows[-1]
                yield rows_to_calls(rows)
        if version is not None:
            await self._remember(query, last, count, version)

    async def _remember(self, query: CallsQuery, last: tuple | None, count: int,
                        version: int) -> None:  # fmt: skip
        """Where a full page (``count`` rows, the last one ``last``) ended."""
        if last is None or query.limit is None or count < query.limit:
            return
        seq = await self._db.read(calls.q_seq_of, query.project_id, last[_ID_AT])
        if seq is not None:
            self._page_ends.put(query, count, (last[_STARTED_AT], seq, version))

    async def count_calls(self, query: CallsQuery) -> int:
        ((count,),) = await self._db.read(calls.q_fetchall, *Selection(query).count())
        count = max(0, count - query.offset)
        return count if query.limit is None else min(count, query.limit)

    async def trace_storage_bytes(self, project_id: str, trace_ids: list[str]) -> dict[str, int]:
        return await self._db.read(calls.q_trace_bytes, project_id, trace_ids)

    async def project_call_counts(self) -> list[tuple[str, int]]:
        sql = ("SELECT project_id, count(*) FROM calls WHERE op_name IS NOT NULL "
               "GROUP BY project_id ORDER BY project_id")
        return [(p, n) for p, n in await self._db.read(calls.q_fetchall, sql, [])]

    async def delete_calls(self, project_id: str, call_ids: list[str]) -> list[str]:
        return await self._db.write(calls.q_delete_calls, project_id, call_ids)

    async def object_projects(self) -> list[tuple[str]]:
        sql = ("SELECT DISTINCT project_id FROM obj_versions WHERE deleted_at_us IS NULL "
               "ORDER BY project_id")
        return [(p,) for (p,) in await self._db.read(calls.q_fetchall, sql, [])]

    async def store_id(self) -> str | None:
        rows = await self._db.read(calls.q_fetchall,
                                   "SELECT value FROM store_info WHERE key = 'store_id'", [])
        return rows[0][0] if rows else None

    async def retention_days(self, project_id: str) -> int | None:
        sql = "SELECT retention_days FROM project_settings WHERE project_id = ?"
        rows = await self._db.read(calls.q_fetchall, sql, [project_id])
        return rows[0][0] if rows else None

    async def set_retention_days(self, project_id: str, days: int | None,
                                 user_id: str | None) -> None:
        await self._db.write(calls.q_set_retention, project_id, days, time.time_ns() // 1000,
                             user_id)

    async def retained_projects(self) -> list[tuple[str, int]]:
        sql = ("SELECT project_id, retention_days FROM project_settings "
               "WHERE retention_days IS NOT NULL ORDER BY project_id")
        return [(p, d) for p, d in await self._db.read(calls.q_fetchall, sql, [])]

    async def delete_calls_before(self, project_id: str, cutoff_us: int, limit: int) -> int:
        return await self._db.write(calls.q_delete_before, project_id, cutoff_us, limit)

    async def set_call_display_name(self, project_id: str, call_id: str, name: str | None) -> bool:
        return await self._db.write(calls.q_set_display_name, project_id, call_id, name)

    async def thread_turns(self, project_id: str, thread_ids: list[str] | None,
                           max_turns: int) -> list[ThreadTurn]:  # fmt: skip
        return await self._db.read(calls.q_thread_turns, project_id, thread_ids, max_turns)

    # -- objects -------------------------------------------------------------------------

    async def put_object(self, version: ObjectVersion) -> ObjectVersion:
        return await self._db.write(objects.q_put_object, version)

    async def read_object(self, project_id: str, object_id: str, version: str, *,
                          include_deleted: bool = False) -> ObjectVersion | None:  # fmt: skip
        return await self._db.read(objects.q_read_object, project_id, object_id, version,
                                   include_deleted)  # fmt: skip

    async def query_objects(self, query: ObjectsQuery) -> list[ObjectVersion]:
        return await self._db.read(objects.q_query_objects, query)

    async def delete_objects(self, project_id: str, object_id: str, versions: list[str] | None,
                             now_us: int) -> list[ObjectVersion]:  # fmt: skip
        return await self._db.write(objects.q_delete_objects, project_id, object_id, versions, now_us)

    async def set_aliases(self, project_id: str, object_id: str, digest: str,
                          aliases: list[str]) -> bool:  # fmt: skip
        return await self._db.write(objects.q_set_aliases, project_id, object_id, digest, aliases)

    async def remove_aliases(self, project_id: str, object_id: str, aliases: list[str]) -> None:
        await self._db.write(objects.q_remove_aliases, project_id, object_id, aliases)

    async def add_tags(self, project_id: str, object_id: str, digest: str, tags: list[str]) -> bool:
        return await self._db.write(objects.q_add_tags, project_id, object_id, digest, tags)

    async def remove_tags(self, project_id: str, object_id: str, digest: str,
                          tags: list[str]) -> None:  # fmt: skip
        await self._db.write(objects.q_remove_tags, project_id, object_id, digest, tags)

    async def label_names(self, project_id: str, what: Literal["tag", "alias"]) -> list[str]:
        return await self._db.read(objects.q_names, what, project_id)

    async def object_labels(self, project_id: str, versions: list[tuple[str, str]]
                            ) -> dict[tuple[str, str], tuple[list[str], list[str]]]:  # fmt: skip
        return await self._db.read(objects.q_labels, project_id, versions)

    # -- tables and files ----------------------------------------------------------------

    async def put_table(self, project_id: str, digest: str, row_digests: list[str],
                        new_rows: list[tuple[str, str]]) -> None:  # fmt: skip
        digests_json = _json.encode(row_digests).decode()
        await self._db.write(objects.q_put_table, project_id, digest, digests_json, new_rows)

    async def table_row_digests(self, project_id: str, digest: str) -> list[str] | None:
        stored = await self._db.read(objects.q_table_row_digests, project_id, digest)
        return None if stored is None else msgspec.json.decode(stored)

    async def table_rows(self, project_id: str, row_digests: list[str]) -> dict[str, str]:
        return await self._db.read(objects.q_rows, project_id, row_digests)

    async def put_file(self, project_id: str, digest: str, content: bytes) -> None:
        await self._db.write(objects.q_put_file, project_id, digest, content)

    async def read_file(self, project_id: str, digest: str) -> bytes | None:
        return await self._db.read(objects.q_file, project_id, digest)

    # -- feedback and costs --------------------------------------------------------------

    async def put_docs(self, kind: DocKind, docs_: list[Doc]) -> list[Doc]:
        return await self._db.write(docs.q_put_docs, kind, docs_)

    async def query_docs(self, kind: DocKind, query: DocsQuery) -> DocsPage:
        return await self._db.read(docs.q_query_docs, kind, query)

    async def delete_docs(self, kind: DocKind, project_id: str, ids: list[str]) -> int:
        return await self._db.write(docs.q_delete_docs, kind, project_id, ids)

    async def replace_doc(self, kind: DocKind, old_id: str, new: Doc) -> bool:
        return await self._db.write(docs.q_replace_doc, kind, old_id, new)

    # -- project -------------------------------------------------------------------------

    async def storage_bytes(self, project_id: str, kind: StorageKind) -> int:
        return await self._db.read(objects.q_storage_bytes, kind, project_id)

    async def ping(self) -> None:
        await self._db.read(_select_one)

    async def close(self) -> None:
        await self._group.close()
        await self._db.close()


def _select_one(conn: Any) -> None:
    conn.execute("SELECT 1").fetchone()
