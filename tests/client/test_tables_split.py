"""Table bodies over ``remote_request_bytes_limit`` are split as the seed describes."""

from __future__ import annotations

import msgspec
import pytest

from engine.client import RemoteHTTPTraceServer, _tables
from engine.client._core import ClientCore, HttpResponse
from engine.wire import encode
from tests.client.helpers import rows
from tests.client.stub import RecordingProxy

LIMIT_BYTES = 2_000


class _FakeTableServer:
    """Answers table plans without a network: a table's digest names its row list."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, dict]] = []

    def run(self, plan):
        try:
            request = next(plan)
            while True:
                body = msgspec.json.decode(request.body)
                self.bodies.append((request.url.rsplit("/", 2)[-2:][-1], body))
                request = plan.send(self._answer(request.url, body))
        except StopIteration as stop:
            return stop.value

    def _answer(self, url: str, body: dict) -> HttpResponse:
        if url.endswith("/table/create"):
            table = [r["i"] for r in body["table"]["rows"]]
            reply = {"digest": repr(table), "row_digests": [str(i) for i in table]}
        else:
            table = list(eval(body["base_digest"]))  # the fake's own digests: list reprs
            for update in body["updates"]:
                table.append(update["append"]["row"]["i"])
            reply = {"digest": repr(table),
                     "updated_row_digests": [str(u["append"]["row"]["i"]) for u in body["updates"]]}
        return HttpResponse(200, {}, msgspec.json.encode(reply))


def test_small_table_create_is_one_request():
    fake = _FakeTableServer()
    core = ClientCore("http://127.0.0.1:9", remote_request_bytes_limit=LIMIT_BYTES)
    res = fake.run(_tables.table_create(core, {"table": {"project_id": "a/b", "rows": rows(3)}}))
    assert [name for name, _ in fake.bodies] == ["create"] and res.digest == "[0, 1, 2]"


def test_large_create_is_empty_create_then_halved_appends_chained_on_digests():
    fake = _FakeTableServer()
    core = ClientCore("http://127.0.0.1:9", remote_request_bytes_limit=LIMIT_BYTES)
    res = fake.run(_tables.table_create(
        core, {"table": {"project_id": "a/b", "rows": rows(40, pad_bytes=100)}}))
    assert res.digest == repr(list(range(40)))
    assert res.row_digests == [str(i) for i in range(40)]
    (first, create), *updates = fake.bodies
    assert first == "create" and create["table"]["rows"] == []
    assert len(updates) > 1
    for _, body in updates:
        assert len(encode(body)) <= LIMIT_BYTES or len(body["updates"]) == 1


def test_update_over_limit_holding_one_operation_is_sent_whole():
    fake = _FakeTableServer()
    core = ClientCore("http://127.0.0.1:9", remote_request_bytes_limit=100)
    big = {"append": {"row": {"i": 0, "pad": "x" * 500}}}
    fake.run(_tables.table_update(core, {"project_id": "a/b", "base_digest": "[]",
                                         "updates": [big]}))
    assert len(fake.bodies) == 1


@pytest.mark.integration
def test_split_create_against_engine_serve_equals_the_unsplit_table(server_url, project):
    table_rows = rows(30, pad_bytes=150)
    with RecordingProxy(server_url) as proxy, \
            RemoteHTTPTraceServer(proxy.url, remote_request_bytes_limit=LIMIT_BYTES) as small:
        split = small.table_create({"table": {"project_id": project, "rows": table_rows}})
        sent = list(proxy.requests)
    with RemoteHTTPTraceServer(server_url) as whole:
        unsplit = whole.table_create({"table": {"project_id": project, "rows": table_rows}})
        read = whole.table_query({"project_id": project, "digest": split.digest})
    assert split.digest == unsplit.digest  # content addressed: same rows, same table
    assert split.row_digests == unsplit.row_digests
    assert [r.val["i"] for r in read.rows] == list(range(30))
    paths = [r.path for r in sent]
    assert paths[0] == "/table/create" and set(paths[1:]) == {"/table/update"}
    assert len(paths) > 2
    assert all(len(r.body) <= LIMIT_BYTES for r in sent)
