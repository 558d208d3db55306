"""The storage interface of ``engine serve``: what the routes need from a store, not how.

Routes hold a :class:`Store` and never know which one: SQLite (``_sqlite_store``, the
default), the ``count`` sink (``_count_store``: calls counted, not kept) or any other
(ClickHouse, issue 21). A store receives values that the routes have already validated
(project ids, digests, ``$expr`` trees, sort fields) and answers with the value types
below; the SQL it runs is its own business (``_calls_sql`` builds call queries for any
SQL dialect, so a second SQL store need not rewrite it).

What every implementation keeps:

- **One project per operation.** Nothing reads or writes across ``project_id``.
- **Idempotent writes.** Calls are upserted by ``(project_id, id)``: a start, an end
  and a complete each set only their own fields, so they merge in any order and a
  retried batch changes nothing. Object versions, table rows, tables and files are
  addressed by their content digest: storing the same content again adds nothing.
- **Times are integers**: microseconds since the Unix epoch, UTC, in and out.
- **JSON values stay text.** Inputs, outputs, object values and table rows cross the
  interface as JSON text (``str``) or as the raw models of ``_ingest_models``; the store
  keeps them verbatim and hands them back verbatim.
- **Reads after writes.** An operation's effect is visible to every later call on the
  same store object once its coroutine has returned.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from typing import Any, Literal

import msgspec

from engine.server._rows import Complete, End, Start
from engine.wire.query import CallsFilter, SortBy

# A call as stored: CallSchema field names plus ``otel_dump``; ``started_at`` / ``ended_at``
# as datetimes; JSON fields (inputs, output, summary, attributes, otel_dump) as
# ``msgspec.Raw``, None when absent. ``_calls_view`` turns it into weave's answer.
CallRow = dict[str, Any]
DocKind = Literal["feedback", "costs"]
StorageKind = Literal["trace", "objects", "tables", "files"]


class InvalidQuery(ValueError):
    """A query names something the store cannot do; ``field`` says which part (a 422)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class CallsQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Which calls, in which order: the body of ``/calls/stream_query`` once validated.

    ``query`` is weave's ``{"$expr": …}`` tree, already checked by ``_query_expr``
    (operators known, shapes right). ``sort_by`` fields are the wire's (``started_at``,
    ``inputs.x.y``, ``summary.weave.latency_ms``…). With no sort the order is by start
    time; ties are broken by arrival order, so pages never overlap.

    ``json_columns``: the JSON columns (``_rows.RAW_COLUMNS``) the answer shows, the
    others read as None without being read (a page of 1 MB outputs that shows none of
    them reads none); None: every one. Filters and sorts see every column either way.
    """

    project_id: str
    filter: CallsFilter | None = None
    query: dict[str, Any] | None = None
    sort_by: tuple[SortBy, ...] = ()
    limit: int | None = None
    offset: int = 0
    json_columns: tuple[str, ...] | None = None


class ObjectVersion(msgspec.Struct, frozen=True, kw_only=True):
    """One stored version of an object (or op). ``val`` is its JSON text."""

    project_id: str
    object_id: str
    digest: str
    kind: str  # "op" or "object"
    base_object_class: str | None
    leaf_object_class: str | None
    val: str
    wb_user_id: str | None
    created_at_us: int
    version_index: int = -1  # assigned by the store: 0 for an object's first version
    deleted_at_us: int | None = None
    is_latest: bool = False


ObjectSortField = Literal["object_id", "created_at"]


class ObjectsQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Live object versions of one project; ``None`` filters are not applied."""

    project_id: str
    object_ids: tuple[str, ...] | None = None
    base_object_classes: tuple[str, ...] | None = None
    exclude_base_object_classes: tuple[str, ...] | None = None
    leaf_object_classes: tuple[str, ...] | None = None
    is_op: bool | None = None
    latest_only: bool = False
    tags: tuple[str, ...] | None = None  # versions carrying any of these tags
    aliases: tuple[str, ...] | None = None  # versions any of these aliases name ("latest" too)
    # (field, descending), most significant first; then created_at, object_id, version
    sort_by: tuple[tuple[ObjectSortField, bool], ...] = ()
    limit: int | None = None
    offset: int = 0


class Doc(msgspec.Struct, frozen=True):
    """A feedback or cost document: JSON text keyed by ``(project_id, id)``."""

    project_id: str
    id: str
    created_at_us: int
    doc: str


class DocsQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Documents of one project matching an ``$expr`` tree (``None``: all), sorted by
    dotted paths (``(path, descending)``, most significant first; else creation order),
    paged, and projected to ``fields`` (dotted names kept as keys) when given."""

    project_id: str
    query: dict[str, Any] | None = None
    sort_by: tuple[tuple[str, bool], ...] = ()
    limit: int | None = None
    offset: int = 0
    fields: tuple[str, ...] | None = None


class DocsPage(msgspec.Struct, frozen=True):
    docs: list[dict[str, Any]]
    total: int  # how many matched before paging


class ThreadTurn(msgspec.Struct, frozen=True, array_like=True):
    thread_id: str
    call_id: str
    started_at_us: int | None
    ended_at_us: int | None


class Store(abc.ABC):
    """Everything ``engine serve`` keeps. Each method is one operation of one project."""

    kind: str  # what ``/health`` and ``/stats`` report: "sqlite", "count", …
    # a page of ``query_calls`` ends once its calls' JSON passes this many bytes (the call
    # that passes it is its last): a read request holds its page about three times over
    chunk_bytes = 4 * 1024 * 1024

    # -- calls -------------------------------------------------------------------------

    @abc.abstractmethod
    async def insert_calls(self, starts: list[Start], ends: list[End], completes: list[Complete]) -> None:
        """Upsert the three kinds of call parts in one transaction (all or nothing)."""

    @abc.abstractmethod
    def query_calls(self, query: CallsQuery) -> AsyncIterator[list[CallRow]]:
        """The matching calls in order, a page (a bounded list) at a time. A call that has
        only its end so far (no ``op_name``) is not matched."""

    @abc.abstractmethod
    async def count_calls(self, query: CallsQuery) -> int:
        """How many calls ``query`` matches, ``limit`` and ``offset`` applied."""

    async def project_call_counts(self) -> list[tuple[str, int]]:
        """(project id, calls) of every project with calls, by id: the trace browser's first
        page. The one operation over all projects; a store that cannot list them has none."""
        return []

    @abc.abstractmethod
    async def trace_storage_bytes(self, project_id: str, trace_ids: list[str]) -> dict[str, int]:
        """``trace_id -> bytes`` of the stored JSON of every call of each trace."""

    @abc.abstractmethod
    async def delete_calls(self, project_id: str, call_ids: list[str]) -> list[str]:
        """Delete the calls and all their descendants; returns the ids deleted."""

    @abc.abstractmethod
    async def set_call_display_name(self, project_id: str, call_id: str, name: str | None) -> bool:
        """False when there is no such call."""

    @abc.abstractmethod
    async def thread_turns(
        self, project_id: str, thread_ids: list[str] | None, max_turns: int
    ) -> list[ThreadTurn]:
        """Turn calls (``id == turn_id``) of threads, grouped by thread, in start order."""

    # -- objects -----------------------------------------------------------------------

    @abc.abstractmethod
    async def put_object(self, version: ObjectVersion) -> ObjectVersion:
        """Store a version unless its digest is stored for that object (a deleted one is
        revived); either way it becomes the latest. Returns it as stored."""

    @abc.abstractmethod
    async def read_object(self, project_id: str, object_id: str, version: str, *,
                          include_deleted: bool = False) -> ObjectVersion | None:  # fmt: skip
        """A live version by digest, by ``v<N>`` (its version index) or by an alias name
        (``latest`` among them); with ``include_deleted`` a deleted one too (its
        ``deleted_at_us`` set)."""

    @abc.abstractmethod
    async def query_objects(self, query: ObjectsQuery) -> list[ObjectVersion]: ...

    @abc.abstractmethod
    async def delete_objects(
        self, project_id: str, object_id: str, versions: list[str] | None, now_us: int
    ) -> list[ObjectVersion]:
        """Mark versions (digests, ``latest`` or ``v<N>``; ``None``: every live one)
        deleted; returns the versions deleted."""

    @abc.abstractmethod
    async def set_aliases(
        self, project_id: str, object_id: str, digest: str, aliases: list[str]
    ) -> bool:
        """Point each alias of the object at ``digest`` (moving it if it named another
        version). False (nothing done) when ``digest`` is not a live version."""

    @abc.abstractmethod
    async def remove_aliases(self, project_id: str, object_id: str, aliases: list[str]) -> None: ...

    @abc.abstractmethod
    async def add_tags(self, project_id: str, object_id: str, digest: str, tags: list[str]) -> bool:
        """False (nothing done) when ``digest`` is not a live version."""

    @abc.abstractmethod
    async def remove_tags(
        self, project_id: str, object_id: str, digest: str, tags: list[str]
    ) -> None: ...

    @abc.abstractmethod
    async def label_names(self, project_id: str, what: Literal["tag", "alias"]) -> list[str]:
        """Every distinct tag (or alias) in use in the project, sorted."""

    @abc.abstractmethod
    async def object_labels(
        self, project_id: str, versions: list[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[list[str], list[str]]]:
        """``(object_id, digest) -> (tags, aliases)`` of each version, each list sorted."""

    # -- tables ------------------------------------------------------------------------

    @abc.abstractmethod
    async def put_table(
        self, project_id: str, digest: str, row_digests: list[str], new_rows: list[tuple[str, str]]
    ) -> None:
        """Store rows ``(row digest, JSON text)`` and the table ``digest`` → its row digests."""

    @abc.abstractmethod
    async def table_row_digests(self, project_id: str, digest: str) -> list[str] | None:
        """A table's row digests in order, ``None`` if no such table."""

    @abc.abstractmethod
    async def table_rows(self, project_id: str, row_digests: list[str]) -> dict[str, str]:
        """``row digest -> JSON text`` of the stored rows among ``row_digests``."""

    # -- files -------------------------------------------------------------------------

    @abc.abstractmethod
    async def put_file(self, project_id: str, digest: str, content: bytes) -> None: ...

    @abc.abstractmethod
    async def read_file(self, project_id: str, digest: str) -> bytes | None: ...

    # -- feedback and costs ------------------------------------------------------------

    @abc.abstractmethod
    async def put_docs(self, kind: DocKind, docs: list[Doc]) -> list[Doc]:
        """Insert documents; one whose id is stored replaces it (weave's feedback create
        with a known id does), so a resent create changes nothing. Returns them."""

    @abc.abstractmethod
    async def query_docs(self, kind: DocKind, query: DocsQuery) -> DocsPage: ...

    @abc.abstractmethod
    async def delete_docs(self, kind: DocKind, project_id: str, ids: list[str]) -> int: ...

    @abc.abstractmethod
    async def replace_doc(self, kind: DocKind, old_id: str, new: Doc) -> bool:
        """Delete ``old_id`` and insert ``new`` atomically; False (nothing done) if
        ``old_id`` is not stored in ``new.project_id``."""

    # -- retention (weave's project TTL settings) -----------------------------------------

    # calls one delete_calls_before takes at most (ingest and reads go on between them)
    retention_chunk = 5_000

    @abc.abstractmethod
    async def object_projects(self) -> list[tuple[str]]:
        """``(project_id,)`` of every project with live objects, ops or datasets (crosses
        projects: the trace browser's list and ``engine copy`` name projects without calls
        too; filtered per key like ``project_call_counts``)."""

    async def store_id(self) -> str | None:
        """An id of the data this store holds: the same for every server on it, new when the
        data is (a fresh SQLite file, a recreated ClickHouse database); None when it has
        none. ``/server_info`` answers it, so a client can key what it caches of a server by
        it (the weave integration keys weave's disk cache of created objects by it)."""
        return None

    @abc.abstractmethod
    async def retention_days(self, project_id: str) -> int | None:
        """Days the project's calls are kept after they start; None: until deleted."""

    @abc.abstractmethod
    async def set_retention_days(self, project_id: str, days: int | None,
                                 user_id: str | None) -> None:
        """Keep the project's calls ``days`` days from now on (None: until deleted)."""

    @abc.abstractmethod
    async def retained_projects(self) -> list[tuple[str, int]]:
        """``(project_id, days)`` of every project with a retention (crosses projects:
        for the server's own pruning, :mod:`engine.server._retention`, never a route)."""

    @abc.abstractmethod
    async def delete_calls_before(self, project_id: str, cutoff_us: int, limit: int) -> int:
        """Delete up to ``limit`` calls of the project that started before ``cutoff_us``
        (a call known only by its end: that ended before it, whatever start time the end
        carried); returns how many. Unlike
        :meth:`delete_calls`, calls below them stay (they started later: theirs is later)."""

    # -- project -----------------------------------------------------------------------

    @abc.abstractmethod
    async def storage_bytes(self, project_id: str, kind: StorageKind) -> int:
        """Bytes of stored JSON text (file content for files) of one kind."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Ask the store something trivial: returns if it answers, else raises (an
        ``ApiError`` 503 when its server cannot be reached). ``/ready`` asks it."""

    @abc.abstractmethod
    async def close(self) -> None: ...
