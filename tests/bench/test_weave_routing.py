"""bench.weave_routing: weave's per-project table routing, as bench.open_calls runs it."""

import json
import urllib.error
import urllib.request

from bench.open_calls import _weave_routing

T0 = "2026-01-01T00:00:00Z"


def _post(url: str, path: str, body: object) -> int:
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


def _upsert(project: str, call_id: str) -> dict:
    start = {"project_id": project, "id": call_id, "trace_id": call_id, "op_name": "op",
             "started_at": T0, "attributes": {}, "inputs": {}}
    end = {"project_id": project, "id": call_id, "ended_at": T0, "summary": {}}
    return {"batch": [{"mode": "start", "req": {"start": start}},
                      {"mode": "end", "req": {"end": end}}]}


def test_upsert_batches_are_taken_or_refused_by_where_the_projects_calls_are():
    """The bench project's calls already in the legacy table: upsert batches are taken; a
    new project's first v2 write puts it in calls_complete, and its upsert batch is refused
    (400 CALLS_COMPLETE_MODE_REQUIRED) and kept nowhere. No accepts_upsert_batch."""
    with _weave_routing("merged", 0) as url:
        with urllib.request.urlopen(url + "/server_info", timeout=30) as reply:
            assert "accepts_upsert_batch" not in json.load(reply)
        assert _post(url, "/call/upsert_batch", _upsert("bench/open-calls", "a")) == 200
        start = _upsert("e/new", "b")["batch"][0]["req"]
        assert _post(url, "/v2/e/new/call/start", start) == 200
        assert _post(url, "/call/upsert_batch", _upsert("e/new", "c")) == 400
        with urllib.request.urlopen(url + "/stats", timeout=30) as reply:
            stats = json.load(reply)
    assert stats["refused_complete_mode_required"] == 1 and stats["requests_upsert_batch"] == 2
    assert stats["calls_started"] == 2 and stats["calls_whole"] == 1  # a whole, b started
