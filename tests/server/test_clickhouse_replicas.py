"""``engine serve --store clickhouse://…`` as stateless replicas: two server processes on
one ClickHouse database (the session's local ClickHouse server), writes through one,
reads through the other, as behind a load balancer."""

import urllib.request

import msgspec
import pytest

from engine.server import serve_subprocess
from tests.server.harness import PROJECT, complete, end, start, upsert_batch

pytestmark = pytest.mark.integration


def _post(url: str, path: str, body: dict) -> bytes:
    request = urllib.request.Request(
        url + path, data=msgspec.json.encode(body), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        return resp.read()


def _json(url: str, path: str, body: dict) -> dict:
    return msgspec.json.decode(_post(url, path, body))


def _get_json(url: str, path: str) -> dict:
    with urllib.request.urlopen(url + path, timeout=60) as resp:
        return msgspec.json.decode(resp.read())


def _stream(url: str, **query) -> list[dict]:
    lines = _post(url, "/calls/stream_query", {"project_id": PROJECT, **query}).splitlines()
    return [msgspec.json.decode(line) for line in lines]


def test_two_serve_replicas_share_one_clickhouse(clickhouse_url):
    with serve_subprocess(store=clickhouse_url) as writer, serve_subprocess(store=clickhouse_url) as reader:
        _post(writer, "/call/upsert_batch", upsert_batch(("start", start("a", t_s=0)),
                                                         ("start", start("b", parent_id="a", t_s=1))))  # fmt: skip
        _post(writer, "/v2/ent/proj/calls/complete", {"batch": [complete("c", t_s=2)]})
        _post(reader, "/call/end", {"end": end("a", t_s=5)})  # the end of a call through the other
        _post(writer, "/call/update", {"project_id": PROJECT, "call_id": "b", "display_name": "bee"})

        calls = _stream(reader)
        assert [c["id"] for c in calls] == ["a", "b", "c"]
        assert calls[0]["output"] == {"answer": "a-a"} and calls[0]["ended_at"].startswith("2026")
        assert calls[1]["display_name"] == "bee" and calls[1]["ended_at"] is None
        assert _json(reader, "/calls/query_stats", {"project_id": PROJECT})["count"] == 3
        assert _json(writer, "/call/read", {"project_id": PROJECT, "id": "c"})["call"]["op_name"]

        digest = _json(writer, "/obj/create", {"obj": {"project_id": PROJECT, "object_id": "cfg",
                                                        "val": {"k": 1}}})["digest"]  # fmt: skip
        read = _json(reader, "/obj/read", {"project_id": PROJECT, "object_id": "cfg", "digest": "latest"})
        assert read["obj"]["digest"] == digest and read["obj"]["val"] == {"k": 1}

        deleted = _json(reader, "/calls/delete", {"project_id": PROJECT, "call_ids": ["a"]})
        assert deleted == {"num_deleted": 2}  # a and its child b
        assert [c["id"] for c in _stream(writer)] == ["c"]
        # the trace browser's projects page, through the replica that wrote none of them,
        # with the retention the other replica set
        _json(writer, "/project/ttl_settings/update", {"project_id": PROJECT, "retention_days": 90})
        assert _json(reader, "/project/ttl_settings/read", {"project_id": PROJECT}) == {"retention_days": 90}
        assert _get_json(reader, "/ui/projects") == {"projects": [
            {"project_id": PROJECT, "calls": 1, "retention_days": 90}]}
