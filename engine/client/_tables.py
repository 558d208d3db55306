"""Table creates and updates that fit ``remote_request_bytes_limit`` (the seed's docstrings).

A table update is a list of operations applied in order, so a list can be cut in two:
the first half applied to ``base_digest`` gives a table whose digest is the base of the
second half. An update body over the limit with more than one operation is halved that
way, recursively. A table create over the limit becomes an empty create followed by
one (split) update appending every row. An update holding one operation is sent as it is:
if it is still too large the server's 413 surfaces as :class:`engine.HTTPError`.
"""

from __future__ import annotations

from typing import Any

from engine.client._core import ClientCore, Plan, coerce
from engine.common._errors import SendError
from engine.wire import _codec
from engine.wire.tables import (
    TableAppendSpec,
    TableAppendSpecPayload,
    TableCreateReq,
    TableCreateRes,
    TableSchemaForInsert,
    TableUpdateReq,
    TableUpdateRes,
)

__all__ = ["table_create", "table_update"]


def table_create(core: ClientCore, req: Any) -> Plan[TableCreateRes]:
    req = coerce(req, TableCreateReq)
    if len(_codec.encode(req)) <= core.remote_request_bytes_limit or not req.table.rows:
        return (yield from core.call("table_create", req))
    table = req.table
    empty = TableCreateReq(table=TableSchemaForInsert(project_id=table.project_id, rows=[]))
    created = yield from core.call("table_create", empty)
    appends = [TableAppendSpec(append=TableAppendSpecPayload(row=row)) for row in table.rows]
    updated = yield from table_update(core, TableUpdateReq(
        project_id=table.project_id, base_digest=created.digest, updates=appends))
    if table.expected_digest is not None and table.expected_digest != updated.digest:
        raise SendError(f"table_create: expected digest {table.expected_digest!r}, but the "
                        f"server built {updated.digest!r} from the rows", retriable=False)
    return TableCreateRes(digest=updated.digest, row_digests=updated.updated_row_digests)


def table_update(core: ClientCore, req: Any) -> Plan[TableUpdateRes]:
    req = coerce(req, TableUpdateReq)
    if len(req.updates) <= 1 or len(_codec.encode(req)) <= core.remote_request_bytes_limit:
        return (yield from core.call("table_update", req))
    middle = len(req.updates) // 2
    first = yield from table_update(core, TableUpdateReq(
        project_id=req.project_id, base_digest=req.base_digest, updates=req.updates[:middle]))
    second = yield from table_update(core, TableUpdateReq(
        project_id=req.project_id, base_digest=first.digest, updates=req.updates[middle:]))
    return TableUpdateRes(digest=second.digest,
                          updated_row_digests=first.updated_row_digests
                          + second.updated_row_digests)
