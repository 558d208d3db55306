"""weave's REST object API, ``/v2/{entity}/{project}/…``: ops, datasets, scorers,
evaluations and models, each stored as the object (and ops, files, tables) weave's own
client would publish for it, so the classic routes and weave's UI read them alike.

- op: an ``obj.py`` file with the source, and an op object naming it;
- dataset: a table of the rows and a ``Dataset`` object whose ``rows`` is its ref;
- scorer: a ``<id>_score`` op from the given source, a ``<id>_summarize`` op, and a
  ``Scorer`` object naming both by digest;
- evaluation: ``<id>.evaluate`` / ``.predict_and_score`` / ``.summarize`` ops and an
  ``Evaluation`` object with the dataset, scorers and trials;
- model: an ``obj.py`` file with the source and a ``Model`` object with its attributes.

Object ids come from the name as weave makes them (lowercase; spaces and slashes become
``_``; other characters than letters, digits, ``_ . -`` dropped). Lists are JSONL, newest
versions and ops' latest versions as weave lists them; reads take a digest, ``latest`` or
``v<N>``. The placeholder ops' source text is engine's own (weave's differs, and so do
those ops' digests).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import web

from engine.server._body import ApiError, path_project
from engine.server._digest import bytes_digest, table_digest, value_digest
from engine.server._reply import not_found, now_us, ok, page_of, stream_jsonl
from engine.server._routes_objects import check_object_id, kind_of, object_classes
from engine.server._rows import from_us
from engine.server._state import state_of
from engine.server._store import ObjectsQuery, ObjectVersion
from engine.wire._base import Request

routes = web.RouteTableDef()
OP_FILE = "obj.py"
_UNSAFE = re.compile(r"[^\w.-]")
_PLACEHOLDER_OP = "def func(*args, **kwargs):\n    ...  # engine serve: no source code was given\n"
_SUMMARIZE = "def summarize(score_rows: list) -> dict | None:\n    ...  # engine serve placeholder\n"
_EVALUATION_OPS = {
    "evaluate": "def evaluate(evaluation, model):\n    ...  # engine serve placeholder\n",
    "predict_and_score": "def predict_and_score(evaluation, example):\n    ...  # engine serve placeholder\n",
    "summarize": "def summarize(evaluation_results):\n    ...  # engine serve placeholder\n",
}


class OpCreateReq(Request, kw_only=True):
    name: str | None = None
    source_code: str | None = None
    description: str | None = None


class DatasetCreateReq(Request, kw_only=True):
    name: str | None = None
    description: str | None = None
    rows: list[dict[str, Any]]


class ScorerCreateReq(Request, kw_only=True):
    name: str
    description: str | None = None
    op_source_code: str


class EvaluationCreateReq(Request, kw_only=True):
    name: str
    description: str | None = None
    dataset: str
    scorers: list[str] | None = None
    trials: int = 1
    evaluation_name: str | None = None
    eval_attributes: dict[str, Any] | None = None


class ModelCreateReq(Request, kw_only=True):
    name: str
    description: str | None = None
    source_code: str
    attributes: dict[str, Any] | None = None


def object_id_of(name: str | None, default: str) -> str:
    """weave's ``make_object_id``; an id it cannot make (empty, too long) is a 400."""
    if name is None:
        return default
    return check_object_id(_UNSAFE.sub("", name.replace(" ", "_").replace("/", "_")).lower(), "name")


def _class_val(class_name: str, name: str | None, description: str | None) -> dict[str, Any]:
    return {"_type": class_name, "_class_name": class_name, "_bases": ["Object", "BaseModel"],
            "name": name, "description": description}  # fmt: skip


# -- storing ------------------------------------------------------------------------------


async def _put(request: web.Request, project_id: str, object_id: str, val: Any) -> ObjectVersion:
    check_object_id(object_id, "name")  # an id made from a name and a suffix may be too long
    base, leaf = object_classes(val)
    version = ObjectVersion(
        project_id=project_id, object_id=object_id, digest=value_digest(val), kind=kind_of(val),
        base_object_class=base, leaf_object_class=leaf, val=msgspec.json.encode(val).decode(),
        wb_user_id=None, created_at_us=now_us(),
    )  # fmt: skip
    return await state_of(request).store.put_object(version)


async def _put_file(request: web.Request, project_id: str, text: str) -> str:
    content = text.encode()
    digest = bytes_digest(content)
    await state_of(request).store.put_file(project_id, digest, content)
    return digest


async def create_op(request: web.Request, project_id: str, name: str | None,
                    source_code: str | None) -> ObjectVersion:  # fmt: skip
    code_digest = await _put_file(request, project_id, source_code or _PLACEHOLDER_OP)
    val = {"_type": "CustomWeaveType", "weave_type": {"type": "Op"}, "files": {OP_FILE: code_digest}}
    return await _put(request, project_id, object_id_of(name, "Op"), val)


def _created(stored: ObjectVersion, **extra: Any) -> web.Response:
    return ok({"digest": stored.digest, "object_id": stored.object_id,
               "version_index": stored.version_index, **extra})  # fmt: skip


def _object_ref(stored: ObjectVersion) -> str:
    return f"weave:///{stored.project_id}/object/{stored.object_id}:{stored.digest}"


async def _decode(request: web.Request, type_: type[Request]) -> Any:
    return await state_of(request).decode(request, type_)


# -- reading ------------------------------------------------------------------------------


async def _read(request: web.Request, what: str) -> ObjectVersion:
    project_id = path_project(request)
    object_id, digest = request.match_info["object_id"], request.match_info["digest"]
    found = await state_of(request).store.read_object(project_id, object_id, digest)
    if found is None:
        raise not_found(f"{what} {object_id}:{digest} in {project_id!r}")
    return found


def int_param(request: web.Request, name: str) -> int | None:
    text = request.query.get(name)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise ApiError(422, f"{name}: expected an integer, got {text!r}") from None


async def _list(request: web.Request, query: ObjectsQuery,
                answer: Callable[[web.Request, ObjectVersion], Any]) -> web.StreamResponse:  # fmt: skip
    limit, offset = page_of(int_param(request, "limit"), int_param(request, "offset"))
    found = await state_of(request).store.query_objects(
        msgspec.structs.replace(query, project_id=path_project(request), limit=limit, offset=offset)
    )

    async def lines():
        for version in found:
            yield [await answer(request, version)]

    return await stream_jsonl(request, lines())


async def _delete(request: web.Request, what: str) -> web.Response:
    project_id, object_id = path_project(request), request.match_info["object_id"]
    digests = request.query.getall("digests", None)
    gone = await state_of(request).store.delete_objects(project_id, object_id, digests, now_us())
    if not gone:
        raise not_found(f"{what} {object_id!r} (versions {digests}) in {project_id!r}")
    return ok({"num_deleted": len(gone)})


def _base(version: ObjectVersion) -> dict[str, Any]:
    return {"object_id": version.object_id, "digest": version.digest,
            "version_index": version.version_index, "created_at": from_us(version.created_at_us)}  # fmt: skip


def _val(version: ObjectVersion) -> dict[str, Any]:
    val = msgspec.json.decode(version.val)
    return val if isinstance(val, dict) else {}


async def _file_text(request: web.Request, version: ObjectVersion) -> str:
    files = _val(version).get("files") or {}
    content = await state_of(request).store.read_file(version.project_id, files.get(OP_FILE, ""))
    return (content or b"").decode(errors="replace")


# -- ops ----------------------------------------------------------------------------------


async def _op_answer(request: web.Request, op: ObjectVersion) -> dict[str, Any]:
    return {**_base(op), "code": await _file_text(request, op)}


@routes.post("/v2/{entity}/{project}/ops")
async def op_create(request: web.Request) -> web.Response:
    req = await _decode(request, OpCreateReq)
    return _created(await create_op(request, path_project(request), req.name, req.source_code))


@routes.get("/v2/{entity}/{project}/ops/{object_id}/versions/{digest}")
async def op_read(request: web.Request) -> web.Response:
    return ok(await _op_answer(request, await _read(request, "op")))


@routes.get("/v2/{entity}/{project}/ops")
async def op_list(request: web.Request) -> web.StreamResponse:
    query = ObjectsQuery(project_id="", is_op=True, latest_only=True)
    return await _list(request, query, _op_answer)


@routes.delete("/v2/{entity}/{project}/ops/{object_id}")
async def op_delete(request: web.Request) -> web.Response:
    return await _delete(request, "op")


# -- datasets -----------------------------------------------------------------------------


async def _dataset_answer(request: web.Request, version: ObjectVersion) -> dict[str, Any]:
    val = _val(version)
    return {**_base(version), "name": val.get("name"), "description": val.get("description"),
            "rows": val.get("rows", "")}  # fmt: skip


@routes.post("/v2/{entity}/{project}/datasets")
async def dataset_create(request: web.Request) -> web.Response:
    req = await _decode(request, DatasetCreateReq)
    project_id, object_id = path_project(request), object_id_of(req.name, "Dataset")
    rows = [(value_digest(row), msgspec.json.encode(row).decode()) for row in req.rows]
    digest = table_digest([d for d, _ in rows])
    await state_of(request).store.put_table(project_id, digest, [d for d, _ in rows], rows)
    val = {**_class_val("Dataset", req.name or "Dataset", req.description),
           "rows": f"weave:///{project_id}/table/{digest}"}  # fmt: skip
    return _created(await _put(request, project_id, object_id, val))


@routes.get("/v2/{entity}/{project}/datasets/{object_id}/versions/{digest}")
async def dataset_read(request: web.Request) -> web.Response:
    return ok(await _dataset_answer(request, await _read(request, "dataset")))


@routes.get("/v2/{entity}/{project}/datasets")
async def dataset_list(request: web.Request) -> web.StreamResponse:
    query = ObjectsQuery(project_id="", base_object_classes=("Dataset",), is_op=False)
    return await _list(request, query, _dataset_answer)


@routes.delete("/v2/{entity}/{project}/datasets/{object_id}")
async def dataset_delete(request: web.Request) -> web.Response:
    return await _delete(request, "dataset")


# -- scorers ------------------------------------------------------------------------------


async def _scorer_answer(request: web.Request, version: ObjectVersion) -> dict[str, Any]:
    val = _val(version)
    return {**_base(version), "name": val.get("name", version.object_id),
            "description": val.get("description"), "score_op": val.get("score", "")}  # fmt: skip


@routes.post("/v2/{entity}/{project}/scorers")
async def scorer_create(request: web.Request) -> web.Response:
    req = await _decode(request, ScorerCreateReq)
    project_id = path_project(request)
    scorer_id = object_id_of(req.name, "Scorer")
    score = await create_op(request, project_id, f"{scorer_id}_score", req.op_source_code)
    summarize = await create_op(request, project_id, f"{scorer_id}_summarize", _SUMMARIZE)
    val = {**_class_val("Scorer", req.name, req.description), "score": score.digest,
           "summarize": summarize.digest, "column_map": None}  # fmt: skip
    stored = await _put(request, project_id, scorer_id, val)
    return _created(stored, scorer=_object_ref(stored))


@routes.get("/v2/{entity}/{project}/scorers/{object_id}/versions/{digest}")
async def scorer_read(request: web.Request) -> web.Response:
    return ok(await _scorer_answer(request, await _read(request, "scorer")))


@routes.get("/v2/{entity}/{project}/scorers")
async def scorer_list(request: web.Request) -> web.StreamResponse:
    query = ObjectsQuery(project_id="", base_object_classes=("Scorer",), is_op=False)
    return await _list(request, query, _scorer_answer)


@routes.delete("/v2/{entity}/{project}/scorers/{object_id}")
async def scorer_delete(request: web.Request) -> web.Response:
    return await _delete(request, "scorer")


# -- evaluations --------------------------------------------------------------------------


async def _evaluation_answer(request: web.Request, version: ObjectVersion) -> dict[str, Any]:
    val = _val(version)
    return {
        **_base(version), "name": val.get("name", version.object_id),
        "description": val.get("description"), "dataset": val.get("dataset", ""),
        "scorers": val.get("scorers", []), "trials": val.get("trials", 1),
        "evaluation_name": val.get("evaluation_name"), "evaluate_op": val.get("evaluate", ""),
        "predict_and_score_op": val.get("predict_and_score", ""),
        "summarize_op": val.get("summarize", ""),
    }  # fmt: skip


@routes.post("/v2/{entity}/{project}/evaluations")
async def evaluation_create(request: web.Request) -> web.Response:
    req = await _decode(request, EvaluationCreateReq)
    project_id = path_project(request)
    evaluation_id = object_id_of(req.name, "Evaluation")
    ops = {name: (await create_op(request, project_id, f"{evaluation_id}.{name}", code)).digest
           for name, code in _EVALUATION_OPS.items()}  # fmt: skip
    val = {
        **_class_val("Evaluation", req.name, req.description), "dataset": req.dataset,
        "scorers": req.scorers or [], "trials": req.trials, "evaluation_name": req.evaluation_name,
        "metadata": None, "preprocess_model_input": None, **ops, **(req.eval_attributes or {}),
    }  # fmt: skip
    stored = await _put(request, project_id, evaluation_id, val)
    return _created(stored, evaluation_ref=_object_ref(stored))


@routes.get("/v2/{entity}/{project}/evaluations/{object_id}/versions/{digest}")
async def evaluation_read(request: web.Request) -> web.Response:
    return ok(await _evaluation_answer(request, await _read(request, "evaluation")))


@routes.get("/v2/{entity}/{project}/evaluations")
async def evaluation_list(request: web.Request) -> web.StreamResponse:
    query = ObjectsQuery(project_id="", base_object_classes=("Evaluation",), is_op=False)
    return await _list(request, query, _evaluation_answer)


@routes.delete("/v2/{entity}/{project}/evaluations/{object_id}")
async def evaluation_delete(request: web.Request) -> web.Response:
    return await _delete(request, "evaluation")


# -- models -------------------------------------------------------------------------------

_MODEL_OWN_FIELDS = frozenset({"_type", "_class_name", "_bases", "name", "description", "files"})


async def _model_answer(request: web.Request, version: ObjectVersion) -> dict[str, Any]:
    val = _val(version)
    attributes = {k: v for k, v in val.items() if k not in _MODEL_OWN_FIELDS}
    return {**_base(version), "name": val.get("name", version.object_id),
            "description": val.get("description"), "source_code": await _file_text(request, version),
            "attributes": attributes or None}  # fmt: skip


@routes.post("/v2/{entity}/{project}/models")
async def model_create(request: web.Request) -> web.Response:
    req = await _decode(request, ModelCreateReq)
    project_id = path_project(request)
    code_digest = await _put_file(request, project_id, req.source_code)
    val = {**_class_val("Model", req.name, req.description), "files": {OP_FILE: code_digest},
           **(req.attributes or {})}  # fmt: skip
    stored = await _put(request, project_id, object_id_of(req.name, "Model"), val)
    return _created(stored, model_ref=_object_ref(stored))


@routes.get("/v2/{entity}/{project}/models/{object_id}/versions/{digest}")
async def model_read(request: web.Request) -> web.Response:
    return ok(await _model_answer(request, await _read(request, "model")))


@routes.get("/v2/{entity}/{project}/models")
async def model_list(request: web.Request) -> web.StreamResponse:
    query = ObjectsQuery(project_id="", base_object_classes=("Model",), is_op=False)
    return await _list(request, query, _model_answer)


@routes.delete("/v2/{entity}/{project}/models/{object_id}")
async def model_delete(request: web.Request) -> web.Response:
    return await _delete(request, "model")


# bodies of these routes, for whoever checks them by type (tests/server/test_fuzz_routes.py)
REQUEST_TYPES = {
    ("POST", "/v2/{entity}/{project}/ops"): OpCreateReq,
    ("POST", "/v2/{entity}/{project}/datasets"): DatasetCreateReq,
    ("POST", "/v2/{entity}/{project}/scorers"): ScorerCreateReq,
    ("POST", "/v2/{entity}/{project}/evaluations"): EvaluationCreateReq,
    ("POST", "/v2/{entity}/{project}/models"): ModelCreateReq,
}
