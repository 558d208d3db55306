"""The sans-IO core of the client: builds requests, decodes answers, translates errors, retries.

Every seed method is a *plan*: a generator that yields :class:`HttpRequest` objects and
receives the matching :class:`HttpResponse`, then returns the method's result. A plan never
touches a socket, so the sync client (``_sync``) and the asyncio client (``_async``) run
the very same plans with their own transports — multi-request methods (the table split,
the feedback batch fallback, legacy-path fallbacks) are written once. Streaming methods
are the exception: their bodies are read lazily by the transports, line by line, and
each line is decoded here (:meth:`ClientCore.decode_line`).

Retries (:class:`RetryPolicy`) apply only to idempotent reads and to ingest (content
addressed or upserted by client-made ids); a delete, purge, replace, a create that makes
server-side ids, a completion or an action is sent once.
"""

from __future__ import annotations

import importlib.metadata
import random
import uuid
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
import yarl

from engine.common._auth import basic_auth, url_credentials
from engine.common._errors import HTTPError, SendError, reason_of
from engine.common._retry import Backoff, Deadline, retriable_status, retry_after_s
from engine.wire import _codec, files, misc, query
from engine.wire.routes import EXTRA_ROUTES, ROUTES, Route

__all__ = ["ClientCore", "HttpRequest", "HttpResponse", "Plan", "RetryPolicy", "coerce"]

T = TypeVar("T")


def _user_agent() -> str:
    # from the installed metadata: importing engine.__version__ here would be circular
    try:
        return f"engine-client/{importlib.metadata.version('engine')}"
    except importlib.metadata.PackageNotFoundError:
        return "engine-client"


USER_AGENT = _user_agent()

# Reads, and ingest the server absorbs when repeated: calls upsert by id, objects / tables /
# files are content addressed, feedback batches carry client ids.
RETRIED_METHODS = frozenset({
    "call_end", "call_read", "call_start", "call_start_batch", "calls_query",
    "calls_query_stats", "calls_query_stream", "cost_query", "ensure_project_exists",
    "feedback_create_batch", "feedback_query", "file_content_read", "file_create",
    "files_stats", "obj_add_tags", "obj_create", "obj_read", "obj_remove_aliases",
    "obj_remove_tags", "obj_set_aliases", "objs_query", "op_create", "op_read", "ops_query",
    "aliases_list", "tags_list",
    "otel_export", "project_stats", "refs_read_batch", "server_info", "table_create",
    "table_query", "table_query_stats", "table_query_stats_batch", "table_query_stream",
    "table_update", "threads_query_stream",
})
# ingest whose retries must be recognisable as one delivery (WIRE.md §1)
_RETRY_ID_METHODS = frozenset({"call_start_batch", "feedback_create_batch"})

UPSERT_MODEL_QUERY = """
mutation UpsertModel($name: String!, $id: String, $entity: String!, $description: String, $repo: String) {
    upsertModel(input: {id: $id, name: $name, entityName: $entity, description: $description, repo: $repo}) {
        model { name description }
    }
}
"""


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request a plan wants sent. ``url`` is absolute; retries resend this very object."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | None
    retry: bool
    # the reply is JSONL, to be read line by line by the transport
    stream: bool = False


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes


Plan = Generator[HttpRequest, HttpResponse, T]


@dataclass(frozen=True)
class RetryPolicy:
    """Jittered exponential backoff honouring Retry-After, bounded by ``budget_s`` per request."""

    budget_s: float = 30.0
    backoff: Backoff = field(default_factory=Backoff)
    rng: random.Random = field(default_factory=random.Random)

    def deadline(self) -> Deadline:
        return Deadline(self.budget_s)

    def delay_s(self, request: HttpRequest, attempt: int, deadline: Deadline,
                response: HttpResponse | None, error: SendError | None) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None to stop retrying."""
        if not request.retry or not _transient(response, error):
            return None
        hinted = retry_after_s(response.headers) if response is not None else None
        delay = self.backoff.delay_s(attempt, self.rng, hinted)
        return delay if delay < deadline.remaining_s() else None


def _transient(response: HttpResponse | None, error: SendError | None) -> bool:
    if error is not None:
        return error.retriable
    assert response is not None
    return retriable_status(response.status)


def coerce(req: Any, type_: type[T]) -> T:
    """The request as its Struct: a Struct passes through, a dict (or any Struct of the same
    fields, e.g. a peer's) is converted; a mismatch raises ``msgspec.ValidationError``."""
    if isinstance(req, type_):
        return req
    if isinstance(req, msgspec.Struct):
        req = msgspec.structs.asdict(req)
    return msgspec.convert(req, type_)


def _join(base: yarl.URL, path: str) -> str:
    # appended, not joined: a base like https://host/traces keeps its prefix
    return str(base).rstrip("/") + path


def _redacted(url: yarl.URL) -> str:
    return str(url.with_user(None).with_password(None)) if url.user or url.password else str(url)


class ClientCore:
    """Request building and answer decoding for one trace server (and its W&B API)."""

    def __init__(self, trace_server_url: str, *, remote_request_bytes_limit: int,
                 wandb_base_url: str | None = None, api_key: str | None = None) -> None:
        bare_url, url_auth = url_credentials(trace_server_url)  # http.client ignores userinfo
        self.trace_url = _parse_base(bare_url, "trace_server_url")
        self.wandb_url = _parse_base(wandb_base_url or _default_wandb_url(self.trace_url),
                                     "wandb_base_url")
        if remote_request_bytes_limit <= 0:
            raise ValueError(
                f"remote_request_bytes_limit must be > 0, got {remote_request_bytes_limit}")
        self.remote_request_bytes_limit = remote_request_bytes_limit
        self._auth: str | None = url_auth
        if api_key and not url_auth:
            self.set_api_key(api_key)

    def set_api_key(self, api_key: str) -> None:
        self._auth = basic_auth(api_key)

    @property
    def has_auth(self) -> bool:
        return self._auth is not None

    # -- building --------------------------------------------------------------------------

    def headers(self, content_type: str | None = "application/json") -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if content_type:
            headers["Content-Type"] = content_type
        if self._auth:
            headers["Authorization"] = self._auth
        return headers

    def url(self, route: Route, path: str | None = None, **path_params: str) -> str:
        base = self.wandb_url if route.target == "wandb" else self.trace_url
        return _join(base, (path or route.path).format(**path_params))

    def json_request(self, name: str, body: msgspec.Struct | None, *, path: str | None = None,
                     **path_params: str) -> HttpRequest:
        route = _route(name)
        headers = self.headers("application/json" if body is not None else None)
        if route.streaming:
            headers["Accept"] = "application/jsonl"
        if name in _RETRY_ID_METHODS:
            headers["X-Weave-Retry-Id"] = _codec.uuid7()
        return HttpRequest(route.method, self.url(route, path, **path_params), headers,
                           None if body is None else _codec.encode(body),
                           name in RETRIED_METHODS, route.streaming)

    def multipart_request(self, req: files.FileCreateReq, path: str) -> HttpRequest:
        boundary = uuid.uuid4().hex
        text_fields, (file_name, content) = files.multipart_fields(req)
        headers = self.headers(f"multipart/form-data; boundary={boundary}")
        body = _multipart_body(boundary, text_fields, file_name, content)
        return HttpRequest("POST", self.url(ROUTES["file_create"], path), headers, body,
                           "file_create" in RETRIED_METHODS)

    def otlp_request(self, req: misc.OtelExportReq) -> HttpRequest:
        """The OTLP body is ``traces`` itself: protobuf bytes as they are, else OTLP JSON."""
        is_protobuf = isinstance(req.traces, (bytes, bytearray, memoryview))
        headers = self.headers("application/x-protobuf" if is_protobuf else "application/json")
        headers["project_id"] = req.project_id
        for name in ("wb_run_id", "wb_user_id"):
            if getattr(req, name):
                headers[name] = getattr(req, name)
        body = bytes(req.traces) if is_protobuf else _codec.encode(req.traces)
        return HttpRequest("POST", self.url(ROUTES["otel_export"]), headers, body,
                           "otel_export" in RETRIED_METHODS)

    def graphql_request(self, query_text: str, variables: dict[str, Any]) -> HttpRequest:
        body = _codec.encode(misc.GraphQLReq(query=query_text, variables=variables))
        route = ROUTES["ensure_project_exists"]
        return HttpRequest("POST", self.url(route), self.headers(), body,
                           "ensure_project_exists" in RETRIED_METHODS)

    # -- decoding --------------------------------------------------------------------------

    def check(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        """The response if it is a success; else the HTTPError it means."""
        if 200 <= response.status < 300:
            return response
        raise self.http_error(request, response.status, response.body)

    def http_error(self, request: HttpRequest, status: int, body: bytes) -> HTTPError:
        return HTTPError(status, reason_of(body) or "(no body)",
                         url=_redacted(yarl.URL(request.url)))

    def decode(self, res_type: Any, body: bytes, what: str) -> Any:
        try:
            return _codec.decode(body, res_type)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise SendError(f"{what}: the server's answer does not match "
                            f"{getattr(res_type, '__name__', res_type)}: {exc}",
                            retriable=False) from None

    def decode_line(self, name: str, line: bytes) -> Any:
        return self.decode(_route(name).res, line, name)

    # -- plans -----------------------------------------------------------------------------

    def call(self, name: str, req: Any) -> Plan[Any]:
        """The generic plan: one JSON request to the method's route (legacy paths on 404)."""
        route = _route(name)
        body = None if route.req is None else coerce(req, route.req)
        response = yield from self.send_json(name, body)
        return self.decode(route.res, response.body, name)

    def send_json(self, name: str, body: msgspec.Struct | None) -> Plan[HttpResponse]:
        """Send to the route's path; on 404 try its legacy paths in order."""
        route = _route(name)
        return (yield from self.first_found(
            (route.path, *route.legacy_paths), lambda path: self.json_request(name, body, path=path)))

    def first_found(self, paths: tuple[str, ...],
                    make: Callable[[str], HttpRequest]) -> Plan[HttpResponse]:
        """The first answer that is not a 404, trying ``paths`` in order (newest first)."""
        for path in paths[:-1]:
            request = make(path)
            response = yield request
            if response.status != 404:
                return self.check(request, response)
        request = make(paths[-1])
        return self.check(request, (yield request))

    def server_info(self) -> Plan[query.ServerInfoRes]:
        """Lenient: unknown fields are ignored, a missing one reads as empty."""
        request = self.json_request("server_info", None)
        response = self.check(request, (yield request))
        data = self.decode(dict[str, Any], response.body, "server_info")
        encodings = data.get("accepts_encodings")
        return query.ServerInfoRes(
            min_required_weave_python_version=str(data.get("min_required_weave_python_version") or ""),
            trace_server_version=str(data.get("trace_server_version") or ""),
            accepts_encodings=[str(e) for e in encodings] if isinstance(encodings, list) else [],
            machine=data["machine"] if isinstance(data.get("machine"), str) else None,
        )

    def file_create(self, req: Any) -> Plan[files.FileCreateRes]:
        req = coerce(req, files.FileCreateReq)
        route = ROUTES["file_create"]
        response = yield from self.first_found(
            (route.path, *route.legacy_paths), lambda path: self.multipart_request(req, path))
        return self.decode(files.FileCreateRes, response.body, "file_create")

    def file_content_read(self, req: Any) -> Plan[files.FileContentReadRes]:
        response = yield from self.send_json("file_content_read",
                                             coerce(req, files.FileContentReadReq))
        return files.FileContentReadRes(content=response.body)

    def otel_export(self, req: Any) -> Plan[misc.OtelExportRes]:
        request = self.otlp_request(coerce(req, misc.OtelExportReq))
        response = self.check(request, (yield request))
        if not response.body.strip():
            return misc.OtelExportRes()
        return self.decode(misc.OtelExportRes, response.body, "otel_export")

    def ensure_project_exists(self, entity: str, project: str) -> Plan[misc.EnsureProjectExistsRes]:
        """``upsertModel`` at the W&B API, as weave does; the answer names the project."""
        request = self.graphql_request(UPSERT_MODEL_QUERY, {"name": project, "entity": entity})
        response = self.check(request, (yield request))
        res = self.decode(misc.GraphQLRes, response.body, "ensure_project_exists")
        model = ((res.data or {}).get("upsertModel") or {}).get("model")
        if res.errors or not isinstance(model, dict) or not model.get("name"):
            reason = reason_of(_codec.encode(res.errors[0])) if res.errors else "no model returned"
            raise HTTPError(response.status, f"upsertModel {entity}/{project}: {reason}",
                            url=_redacted(yarl.URL(request.url)), retriable=False)
        return misc.EnsureProjectExistsRes(project_name=str(model["name"]))


def _route(name: str) -> Route:
    return ROUTES.get(name) or EXTRA_ROUTES[name]


def _parse_base(url: str, what: str) -> yarl.URL:
    parsed = yarl.URL(url.rstrip("/"))
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"{what} must be an http(s) URL, got {_redacted(parsed)!r}")
    return parsed


def _default_wandb_url(trace_url: yarl.URL) -> str:
    """The W&B API next to a trace server: hosted → api.wandb.ai; ``<base>/traces`` → base;
    anything else (e.g. ``engine serve``, which answers ``/graphql`` itself) → the same URL."""
    if trace_url.host == "trace.wandb.ai":
        return "https://api.wandb.ai"
    text = str(trace_url)
    return text[: -len("/traces")] if text.endswith("/traces") else text


def _multipart_body(boundary: str, fields: dict[str, str], file_name: str, content: bytes) -> bytes:
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                     f"{value}\r\n".encode())
    safe_name = file_name.replace('"', "%22").replace("\r", "").replace("\n", "")
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                 f'filename="{safe_name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                 .encode())
    parts.append(content)
    parts.append(f"\r\n--{boundary}--\r\n".encode())
    return b"".join(parts)
