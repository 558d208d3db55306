"""weave's own ``SqliteTraceServer``, behind weave's external/internal adapter as the hosted
server runs it, on a JSON-lines pipe: the reference of the
differential tests. Runs under the reference venv (``.venv-ref``, weave 0.52.42), never
under the project's.

Each stdin line is ``{"method": name, "req": {...}}``; the answer line is
``{"status": int, "body": json}``. The request is validated into the method's own request
model (a validation error is a 422, as the hosted FastAPI server answers), exceptions are
mapped to statuses by weave's own error registry, a method that yields is collected into
a list, bytes travel as ``{"$base64": ...}``. ``NotImplementedError`` answers 501.
"""

from __future__ import annotations

import base64
import datetime
import enum
import json
import os
import sys
import typing
from typing import Any

import pydantic
from weave.trace_server.errors import handle_server_exception
from weave.trace_server.external_to_internal_trace_server_adapter import (
    ExternalTraceServer,
    IdConverter,
)
from weave.trace_server.sqlite_trace_server import SqliteTraceServer


class _Ids(IdConverter):
    """Project ids hex-encoded inside (internal ids hold no '/'), other ids kept: the
    external/internal split the hosted server makes, so refs are rewritten as there."""

    def ext_to_int_project_id(self, project_id: str) -> str:
        return project_id.encode().hex()

    def int_to_ext_project_id(self, project_id: str) -> str | None:
        return bytes.fromhex(project_id).decode()

    def ext_to_int_run_id(self, run_id: str) -> str:
        return run_id

    def int_to_ext_run_id(self, run_id: str) -> str:
        return run_id

    def ext_to_int_user_id(self, user_id: str) -> str:
        return user_id

    def int_to_ext_user_id(self, user_id: str) -> str:
        return user_id


def _from_wire(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$base64"}:
            return base64.b64decode(value["$base64"])
        return {k: _from_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_wire(v) for v in value]
    return value


def _to_wire(value: Any) -> Any:
    if isinstance(value, pydantic.BaseModel):
        return _to_wire(value.model_dump(mode="python"))
    if isinstance(value, bytes):
        return {"$base64": base64.b64encode(value).decode()}
    if isinstance(value, enum.Enum):  # str enums: their JSON is their value
        return value.value
    if isinstance(value, dict):
        return {str(_to_wire(k)): _to_wire(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_wire(v) for v in value]
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:  # the reference stores naive UTC times
            value = value.replace(tzinfo=datetime.timezone.utc)
        return value.isoformat()
    return value


def _batch(server: ExternalTraceServer, req: Any) -> Any:
    """``/call/upsert_batch`` as the hosted route runs it: each item through the adapter
    (the adapter has no batch method of its own)."""
    res = [server.call_start(item.req) if item.mode == "start" else server.call_end(item.req)
           for item in req.batch]  # fmt: skip
    return {"res": res}


# weave's REST object API: its routes take no wb_user_id, the hosted server sets the caller's
_V2_PREFIXES = ("op_", "dataset_", "scorer_", "evaluation_", "model_", "prediction_", "score_",
                "eval_results_")  # fmt: skip
CALLER = "user-a"


def _call(server: ExternalTraceServer, method: str, req: dict[str, Any]) -> tuple[int, Any]:
    fn = getattr(server, method)
    req_type = typing.get_type_hints(getattr(SqliteTraceServer, method))["req"]
    if method.startswith(_V2_PREFIXES) and "wb_user_id" in req_type.model_fields:
        req = {"wb_user_id": CALLER, **req}
    try:
        model = req_type.model_validate(_from_wire(req))
    except pydantic.ValidationError as exc:
        return 422, {"reason": str(exc)}
    try:
        result = _batch(server, model) if method == "call_start_batch" else fn(model)
        if hasattr(result, "__next__"):
            result = list(result)
        return 200, _to_wire(result)
    except NotImplementedError as exc:
        return 501, {"reason": f"NotImplementedError: {exc}"}
    except Exception as exc:  # noqa: BLE001 -- every error becomes an answer, as over HTTP
        handled = handle_server_exception(exc)
        message = handled.message
        if handled.status_code == 500:
            message = {"reason": f"{type(exc).__name__}: {exc}"}
        return handled.status_code, _to_wire(message)


def main() -> None:
    # weave prints debug text to stdout (calls_delete's "MUTATION …"): answers go to the
    # original stdout, everything else to stderr
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout = sys.stderr
    internal = SqliteTraceServer(sys.argv[1])
    internal.setup_tables()
    server = ExternalTraceServer(internal, _Ids())
    print(json.dumps({"ready": True}), file=answers, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        status, body = _call(server, request["method"], request["req"])
        print(json.dumps({"status": status, "body": body}, default=str), file=answers, flush=True)


if __name__ == "__main__":
    main()
