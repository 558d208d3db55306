"""The calls weave's evaluation APIs record (runs, predictions, scores): how they are
found, marked and named. weave's server keeps no table of its own for them: each is a
call whose ``attributes.weave`` carries its marks (``evaluation_run``, ``prediction``,
``score`` set to ``"true"`` and the refs it belongs to), under an op weave's server
creates for it (``<model>.predict``, ``<scorer>.score``, ``Evaluation.predict_and_score``).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

import msgspec
from aiohttp import web

from engine.server._routes_v2 import create_op
from engine.server._state import state_of
from engine.server._store import CallRow, CallsQuery, Store
from engine.wire.query import CallsFilter

PREDICT_AND_SCORE_OP = "Evaluation.predict_and_score"
# the TypeScript SDK's name for it
PREDICT_AND_SCORE_OP_TS = "Evaluation.predictAndScore"


def now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def decoded(value: Any) -> Any:
    return msgspec.json.decode(value) if isinstance(value, msgspec.Raw) else value


def marks(call: CallRow) -> dict[str, Any]:
    """The call's ``attributes.weave`` (empty when it has none)."""
    weave = (decoded(call.get("attributes")) or {}).get("weave")
    return weave if isinstance(weave, dict) else {}


def is_marked(call: CallRow, mark: str) -> bool:
    return marks(call).get(mark) == "true"


def marked(mark: str, **equal: str) -> dict[str, Any]:
    """The ``$expr`` query of the calls carrying ``mark`` (and each ``attributes.weave``
    key of ``equal`` at that value)."""
    conditions = [{"$eq": [{"$getField": f"attributes.weave.{key}"}, {"$literal": value}]}
                  for key, value in {mark: "true", **equal}.items()]  # fmt: skip
    return {"$expr": {"$and": conditions}}


async def find_call(store: Store, project_id: str, call_id: str) -> CallRow | None:
    query = CallsQuery(project_id=project_id, filter=CallsFilter(call_ids=[call_id]), limit=1)
    page = await anext(store.query_calls(query), [])
    return page[0] if page else None


def ref_name(ref: str, kinds: tuple[str, ...] = ("object", "op")) -> str | None:
    """The name in ``weave:///entity/project/<kind>/<name>:<version>…``; None when ``ref``
    is not a ref of one of ``kinds``."""
    if not ref.startswith("weave:///"):
        return None
    parts = ref.removeprefix("weave:///").split("/")
    if len(parts) < 4 or parts[2] not in kinds or ":" not in parts[3]:
        return None
    name = parts[3].rsplit(":", 1)[0]
    return name or None


def op_is(op_name: str | None, *names: str) -> bool:
    """Whether a call's op (a name or an op ref) is one of ``names``. Case is ignored:
    weave's server names the ops it creates by lowercased object ids
    (``evaluation.predict_and_score``)."""
    if not op_name:
        return False
    name = ref_name(op_name, ("op",)) or op_name
    return name.lower() in {n.lower() for n in names}


async def op_ref(request: web.Request, project_id: str, name: str, source: str) -> str:
    """The ref of the op ``name`` with the placeholder ``source`` (stored if new)."""
    op = await create_op(request, project_id, name, source)
    return f"weave:///{project_id}/op/{op.object_id}:{op.digest}"


def store_of(request: web.Request) -> Store:
    return state_of(request).store
