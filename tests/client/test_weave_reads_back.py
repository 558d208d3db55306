"""weave 0.54.0's own RemoteHTTPTraceServer reads back calls, objects, tables and feedback
that our client wrote to ``engine serve``."""

from __future__ import annotations

import pytest

from tests.client.helpers import end, rows, start

pytestmark = [pytest.mark.peers, pytest.mark.integration]

weave_binding = pytest.importorskip(
    "weave.trace_server_bindings.remote_http_trace_server", exc_type=ImportError)


def test_weave_client_reads_what_ours_wrote(client, server_url, project):
    theirs = weave_binding.RemoteHTTPTraceServer(server_url)
    s = start(project)
    client.call_start({"start": s})
    client.call_end({"end": end(project, s["id"])})
    obj = client.obj_create({"obj": {"project_id": project, "object_id": "cfg", "val": {"a": 1}}})
    table = client.table_create({"table": {"project_id": project, "rows": rows(2)}})
    fb = client.feedback_create({"project_id": project, "feedback_type": "note",
                                 "weave_ref": f"weave:///{project}/call/{s['id']}",
                                 "payload": {"n": 1}})

    call = theirs.call_read({"project_id": project, "id": s["id"]}).call
    read_obj = theirs.obj_read({"project_id": project, "object_id": "cfg", "digest": obj.digest})
    read_rows = theirs.table_query({"project_id": project, "digest": table.digest}).rows
    feedback = theirs.feedback_query({"project_id": project}).result
    theirs._stainless_client.close()  # weave 0.54.0 has no public close; its socket would leak

    assert call.output == {"y": 2} and call.trace_id == s["trace_id"]
    assert read_obj.obj.val == {"a": 1}
    assert [r.val["i"] for r in read_rows] == [0, 1]
    assert [f["id"] for f in feedback] == [fb.id]
