"""The two sides of the differential tests, each answering ``call(method, req) -> Answer``.

- :class:`ReferenceServer`: weave's own ``SqliteTraceServer`` (weave 0.52.42) in a child
  process of the reference venv (``reference_shim.py``), called with weave's request models.
- :class:`HttpServer`: any trace server URL (``engine serve`` with any store) called
  through weave 0.54.0's own ``RemoteHTTPTraceServer``, so requests take exactly the
  routes, verbs and parameter placement users' clients use. The answer compared is the
  raw JSON the server sent (captured below the client), not the client's parsed models,
  which would hide a ``"3"`` sent for ``3``.

Both take the same request dicts (weave's ``*Req`` shapes); bytes travel as
``{"$base64": …}``.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import httpx

SHIM = Path(__file__).with_name("reference_shim.py")
REF_PYTHON_ENV = "ENGINE_REF_PYTHON"


class Answer(NamedTuple):
    status: int
    body: Any


def reference_python() -> str:
    """The reference venv's interpreter, set by ``scripts/_env.sh``; never guessed."""
    python = os.environ.get(REF_PYTHON_ENV)
    if not python or not Path(python).exists():
        raise RuntimeError(
            f"{REF_PYTHON_ENV} is not set to the reference venv's python (.venv-ref/bin/python); "
            "run the tests through scripts/test, which builds it from requirements-ref.lock"
        )
    return python


class ReferenceServer:
    """weave's ``SqliteTraceServer`` on a fresh database, in a child process."""

    def __init__(self, db_path: Path) -> None:
        self._proc = subprocess.Popen(
            [reference_python(), str(SHIM), str(db_path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "WEAVE_DISABLED": "false", "PYTHONWARNINGS": "ignore"},
        )  # fmt: skip
        ready = self._proc.stdout.readline()  # type: ignore[union-attr]
        if not ready:
            self.close()
            raise RuntimeError("the reference shim exited before it was ready")

    def call(self, method: str, req: dict[str, Any]) -> Answer:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps({"method": method, "req": req}) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the reference shim died during {method}")
        answer = json.loads(line)
        return Answer(answer["status"], answer["body"])

    def close(self) -> None:
        if self._proc.stdin:
            self._proc.stdin.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout:
            self._proc.stdout.close()


class _Capture(httpx.BaseTransport):
    """Records the raw body and status of the last response (streamed bodies read whole)."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self.last: tuple[int, str, bytes] | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        content = response.read()
        self.last = (response.status_code, response.headers.get("content-type", ""), content)
        return httpx.Response(
            response.status_code, headers=response.headers, content=content, request=request
        )

    def close(self) -> None:
        self._inner.close()


def _decoded(content_type: str, content: bytes) -> Any:
    if "jsonl" in content_type:
        return [json.loads(line) for line in content.splitlines() if line.strip()]
    if "json" in content_type:
        return json.loads(content) if content else None
    return {"$base64": base64.b64encode(content).decode()}


def _from_wire(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$base64"}:
            return base64.b64decode(value["$base64"])
        return {k: _from_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_wire(v) for v in value]
    return value


def _file_create(req: dict[str, Any]) -> dict[str, Any]:
    return {"project_id": req["project_id"], "file": (req["name"], req["content"])}


# requests whose 0.54.0 client method takes another shape than weave's server model
_ADAPT: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"file_create": _file_create}
# methods whose raw answer is a list of lines or bytes that the client wraps: wrap it alike
_WRAP: dict[str, Callable[[Any], Any]] = {
    "calls_query": lambda lines: {"calls": lines},
    "file_content_read": lambda content: {"content": content},
    # the 0.54.0 client reads a table stream through /table/query and yields its rows
    "table_query_stream": lambda body: body["rows"] if isinstance(body, dict) else body,
}


class HttpServer:
    """A trace server URL, called through weave 0.54.0's ``RemoteHTTPTraceServer``."""

    def __init__(self, url: str) -> None:
        from weave.trace_server_bindings.remote_http_trace_server import RemoteHTTPTraceServer
        from weave.vendor.weave_server_sdk import Client

        self._capture = _Capture()
        self.client = RemoteHTTPTraceServer(url, should_batch=False)
        # no retries: the first answer is the one compared
        self.client._stainless_client = Client(
            base_url=url, username="", password="", max_retries=0,
            http_client=httpx.Client(transport=self._capture, timeout=60),
        )  # fmt: skip
        self.client._update_client_headers = lambda: None  # keeps the client built above

    def call(self, method: str, req: dict[str, Any]) -> Answer:
        req = _from_wire(req)
        req = _ADAPT.get(method, lambda r: r)(req)
        self._capture.last = None
        try:
            result = getattr(self.client, method)(req)
            if hasattr(result, "__next__"):
                list(result)
        except Exception as exc:  # noqa: BLE001 -- the raw answer below is what counts
            if self._capture.last is None:
                raise RuntimeError(f"{method}: the client raised before any answer: {exc!r}") from exc
        assert self._capture.last is not None
        status, content_type, content = self._capture.last
        body = _decoded(content_type, content)
        if status == 200 and method in _WRAP:
            body = _WRAP[method](body)
        return Answer(status, body)

    def close(self) -> None:
        self._capture.close()
