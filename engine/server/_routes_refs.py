"""``POST /refs/read_batch``: resolve ``weave:///`` URIs to values.

Forms (weave's ``refs_internal``): ``weave:///<entity>/<project>/object/<name>:<digest>``
(also ``op/…``; the digest may be ``latest`` or ``v<N>``), ``…/table/<digest>`` and
``…/call/<call id>``, each optionally followed by an extra path of ``<edge>/<arg>`` pairs:
``key/<dict key>``, ``attr/<attribute>``, ``index/<list index>``, ``id/<row digest>``.
A value on the way that is itself a ``weave:///`` ref is followed. A ref that names
nothing resolves to ``null``, and so does one to a deleted object version (as weave's
servers read it); one to an object never stored is a 404 for the batch (as weave's); a
malformed one is a 422 naming it.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import msgspec
from aiohttp import web

from engine.server._body import ApiError
from engine.server._calls_view import call_view
from engine.server._reply import ok
from engine.server._state import check_project_id, state_of
from engine.server._store import CallsQuery
from engine.wire.query import CallsFilter
from engine.wire.refs import RefsReadBatchReq

routes = web.RouteTableDef()
MAX_REFS = 1000
_SCHEME = "weave:///"
_json = msgspec.json.Encoder()


class _Unresolved(Exception):
    """The ref is well formed but names nothing stored."""


class _MissingObject(_Unresolved):
    """The object (or op) a ref starts from is not stored: weave answers 404 for the batch."""


class _Table(msgspec.Struct, frozen=True):
    project_id: str
    digest: str


class Ref(msgspec.Struct, frozen=True):
    project_id: str
    kind: str
    name: str
    version: str
    extra: tuple[str, ...]


def parse_ref(uri: str, field: str) -> Ref:
    if not uri.startswith(_SCHEME):
        raise ApiError(400, f"{field}: {uri!r} is not a {_SCHEME} ref")
    parts = [urllib.parse.unquote(p) for p in uri[len(_SCHEME) :].split("/")]
    if len(parts) < 4 or not all(parts[:4]):
        raise ApiError(400, f"{field}: {uri!r} is not {_SCHEME}entity/project/kind/name")
    entity, project, kind, name = parts[:4]
    extra = tuple(parts[4:])
    if len(extra) % 2:
        raise ApiError(400, f"{field}: {uri!r} has an extra path that is not edge/arg pairs")
    project_id = f"{entity}/{project}"
    check_project_id(project_id, field)
    if kind in ("object", "op"):
        name, sep, version = name.rpartition(":")
        if not (sep and name and version):
            raise ApiError(400, f"{field}: {uri!r} needs <name>:<digest> after '{kind}/'")
        return Ref(project_id, kind, name, version, extra)
    if kind in ("table", "call"):
        return Ref(project_id, kind, name, "", extra)
    raise ApiError(400, f"{field}: {uri!r} has kind {kind!r}; expected object, op, table or call")


async def _root(request: web.Request, ref: Ref) -> Any:
    if ref.kind == "table":
        return _Table(ref.project_id, ref.name)
    if ref.kind == "call":
        query = CallsQuery(project_id=ref.project_id, filter=CallsFilter(call_ids=[ref.name]),
                           limit=1)  # fmt: skip
        page = await anext(state_of(request).store.query_calls(query), [])
        if not page:
            raise _Unresolved
        return msgspec.json.decode(_json.encode(call_view(page[0])))
    found = await state_of(request).store.read_object(ref.project_id, ref.name, ref.version,
                                                      include_deleted=True)  # fmt: skip
    if found is None:
        raise _MissingObject(f"{ref.kind} {ref.name}:{ref.version} in {ref.project_id!r}")
    if found.deleted_at_us is not None:
        raise _Unresolved  # weave reads a deleted version as null, the batch's others intact
    return msgspec.json.decode(found.val)


async def _follow(request: web.Request, val: Any) -> Any:
    """A value that is itself a ref becomes what it names (tables stay a handle)."""
    if isinstance(val, str) and val.startswith(_SCHEME):
        return await _root(request, parse_ref(val, "stored ref"))
    return val


async def _step(request: web.Request, val: Any, edge: str, arg: str) -> Any:
    val = await _follow(request, val)
    if edge in ("key", "attr") and isinstance(val, dict) and arg in val:
        return val[arg]
    if edge == "index" and isinstance(val, list) and arg.lstrip("-").isdigit():
        index = int(arg)
        if -len(val) <= index < len(val):
            return val[index]
    if edge == "id" and isinstance(val, _Table):
        return await _table_row(request, val, arg)
    raise _Unresolved


async def _table_row(request: web.Request, table: _Table, row_digest: str) -> Any:
    store = state_of(request).store
    digests = await store.table_row_digests(table.project_id, table.digest)
    if digests is None or row_digest not in digests:
        raise _Unresolved
    rows = await store.table_rows(table.project_id, [row_digest])
    return msgspec.json.decode(rows[row_digest])


async def resolve(request: web.Request, ref: Ref, field: str) -> Any:
    """The value ``ref`` names; ``None`` when a path step names nothing or an object on
    the way is deleted; a 404 when one was never stored (as weave answers)."""
    try:
        val = await _root(request, ref)
        for i in range(0, len(ref.extra), 2):
            val = await _step(request, val, ref.extra[i], ref.extra[i + 1])
    except _MissingObject as exc:
        raise ApiError(404, f"{field}: {exc} not found") from None
    except _Unresolved:
        return None
    if isinstance(val, _Table):
        raise ApiError(400, f"{field}: names a whole table; read its rows with /table/query")
    return val


@routes.post("/refs/read_batch")
async def refs_read_batch(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, RefsReadBatchReq)
    if len(req.refs) > MAX_REFS:
        raise ApiError(400, f"refs: at most {MAX_REFS} refs per request, got {len(req.refs)}")
    parsed = [parse_ref(uri, f"refs[{i}]") for i, uri in enumerate(req.refs)]
    vals = [await resolve(request, ref, f"refs[{i}]") for i, ref in enumerate(parsed)]
    return ok({"vals": vals})
