"""Table models (WIRE.md §5): ``/table/create``, ``/table/update``, ``/table/query*``.

A table update is a list of operations, each an object with exactly one key naming
it: ``{"append": {"row": …}}``, ``{"pop": {"index": …}}`` or
``{"insert": {"index": …, "row": …}}``. msgspec cannot tell untagged Structs apart, so
all three decode as :class:`TableUpdateSpec` (one Struct with three optional members,
exactly one set); :class:`TableAppendSpec`, :class:`TablePopSpec` and
:class:`TableInsertSpec` are its typed constructors and encode to the same JSON.
"""

from __future__ import annotations

from typing import Any

from engine.wire._base import Nested, Request, Response
from engine.wire.query import SortBy

__all__ = [
    "TableSchemaForInsert",
    "TableCreateReq",
    "TableCreateRes",
    "TableAppendSpecPayload",
    "TablePopSpecPayload",
    "TableInsertSpecPayload",
    "TableUpdateSpec",
    "TableAppendSpec",
    "TablePopSpec",
    "TableInsertSpec",
    "TableUpdateReq",
    "TableUpdateRes",
    "TableRowFilter",
    "TableQueryReq",
    "TableRowSchema",
    "TableQueryRes",
    "TableQueryStatsReq",
    "TableQueryStatsRes",
    "TableQueryStatsBatchReq",
    "TableStatsRow",
    "TableQueryStatsBatchRes",
    "TableCreateFromDigestsReq",
    "TableCreateFromDigestsRes",
]


class TableSchemaForInsert(Nested, kw_only=True):
    project_id: str
    rows: list[dict[str, Any]]
    expected_digest: str | None = None


class TableCreateReq(Request, kw_only=True):
    table: TableSchemaForInsert


class TableCreateRes(Response, kw_only=True):
    digest: str
    # older servers omit it
    row_digests: list[str] = []


class TableAppendSpecPayload(Nested, kw_only=True):
    row: dict[str, Any]


class TablePopSpecPayload(Nested, kw_only=True):
    index: int


class TableInsertSpecPayload(Nested, kw_only=True):
    index: int
    row: dict[str, Any]


class TableUpdateSpec(Nested, kw_only=True):
    """One table update operation: exactly one of ``append``, ``pop``, ``insert``."""

    append: TableAppendSpecPayload | None = None
    pop: TablePopSpecPayload | None = None
    insert: TableInsertSpecPayload | None = None

    def __post_init__(self) -> None:
        named = [k for k in ("append", "pop", "insert") if getattr(self, k) is not None]
        if len(named) != 1:
            raise ValueError(
                "a table update needs exactly one of append, pop, insert; "
                f"got {', '.join(named) or 'none'}"
            )


class TableAppendSpec(TableUpdateSpec, kw_only=True):
    append: TableAppendSpecPayload


class TablePopSpec(TableUpdateSpec, kw_only=True):
    pop: TablePopSpecPayload


class TableInsertSpec(TableUpdateSpec, kw_only=True):
    insert: TableInsertSpecPayload


class TableUpdateReq(Request, kw_only=True):
    project_id: str
    base_digest: str
    updates: list[TableUpdateSpec]


class TableUpdateRes(Response, kw_only=True):
    digest: str
    # older servers omit it
    updated_row_digests: list[str] = []


class TableRowFilter(Nested, kw_only=True):
    row_digests: list[str] | None = None


class TableQueryReq(Request, kw_only=True):
    project_id: str
    digest: str
    filter: TableRowFilter | None = None
    limit: int | None = None
    offset: int | None = None
    # dot-separated fields reach into row values; none keeps insertion order
    sort_by: list[SortBy] | None = None


class TableRowSchema(Response, kw_only=True):
    """One table row (also one line of ``table_query_stream``)."""

    digest: str
    val: Any
    original_index: int | None = None


class TableQueryRes(Response, kw_only=True):
    rows: list[TableRowSchema]


class TableQueryStatsReq(Request, kw_only=True):
    project_id: str
    digest: str


class TableQueryStatsRes(Response, kw_only=True):
    count: int


class TableQueryStatsBatchReq(Request, kw_only=True):
    project_id: str
    digests: list[str] | None = []
    include_storage_size: bool | None = False


class TableStatsRow(Response, kw_only=True):
    count: int
    digest: str
    storage_size_bytes: int | None = None


class TableQueryStatsBatchRes(Response, kw_only=True):
    tables: list[TableStatsRow]


class TableCreateFromDigestsReq(Request, kw_only=True):
    project_id: str
    row_digests: list[str]
    expected_digest: str | None = None


class TableCreateFromDigestsRes(Response, kw_only=True):
    digest: str
