"""Every JSON body our client sends validates against weave 0.54.0's request TypedDicts.

The tour of ``examples/every_method.py`` (every seed method, batched mode included) runs
through a recording proxy; each recorded body is checked with the structural checker of
``tests/wire/test_peers.py`` against the params type weave has for its route.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import msgspec
import pytest

from tests.client.stub import RecordingProxy

pytestmark = [pytest.mark.peers, pytest.mark.integration]

types = pytest.importorskip("weave.vendor.weave_server_sdk.types", exc_type=ImportError)
from tests.wire.test_peers import _check_typeddict  # noqa: E402  (needs the peers extra)

PARAMS_BY_PATH = {
    "/call/start": "CallStartParams",
    "/call/end": "CallEndParams",
    "/call/upsert_batch": "CallUpsertBatchParams",
    "/call/read": "CallReadParams",
    "/calls/stream_query": "CallStreamQueryParams",
    "/calls/query_stats": "CallQueryStatsParams",
    "/calls/delete": "CallDeleteParams",
    "/call/update": "CallUpdateParams",
    "/obj/create": "ObjectCreateParams",
    "/obj/read": "ObjectReadParams",
    "/objs/query": "ObjectQueryParams",
    "/obj/delete": "ObjectDeleteParams",
    "/table/create": "TableCreateParams",
    "/table/update": "TableUpdateParams",
    "/table/query": "TableQueryParams",
    "/table/query_stream": "TableQueryParams",
    "/table/query_stats": "TableQueryStatsParams",
    "/table/query_stats_batch": "TableQueryStatsBatchParams",
    "/refs/read_batch": "RefReadBatchParams",
    "/file/content": "FileContentParams",
    "/files/query_stats": "FileStatsParams",
    "/feedback/create": "FeedbackCreateParams",
    "/feedback/batch/create": "FeedbackBatchCreateParams",
    "/feedback/query": "FeedbackQueryParams",
    "/feedback/purge": "FeedbackPurgeParams",
    "/feedback/replace": "FeedbackReplaceParams",
    "/cost/create": "CostCreateParams",
    "/cost/query": "CostQueryParams",
    "/cost/purge": "CostPurgeParams",
    "/completions/create": "CompletionCreateParams",
    "/completions/create_stream": "CompletionCreateStreamParams",
    "/project/stats": "ProjectStatsParams",
    "/threads/stream_query": "ThreadStreamQueryParams",
}
# v2 routes carry entity and project in the path, not the body
V2_PARAMS = {re.compile(r"/v2/[^/]+/[^/]+/calls/complete"): "V2CallCompleteParams"}
# bodies weave has no JSON params type for: legacy op routes, actions, OTLP, multipart,
# GraphQL, and bodiless GETs
NO_PEER = {"/op/create", "/op/read", "/ops/query", "/actions/execute_batch", "/otel/v1/traces",
           "/file/create", "/graphql", "/server_info"}
SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "every_method.py"


def _params_for(path: str):
    name = PARAMS_BY_PATH.get(path)
    for pattern, v2_name in V2_PARAMS.items():
        if pattern.fullmatch(path):
            name = v2_name
    return None if name is None else getattr(types, name)


def _tour(url: str) -> int:
    spec = importlib.util.spec_from_file_location("every_method", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Tour(url).run()


def test_every_body_the_client_sends_validates_against_weave_params(server_url):
    with RecordingProxy(server_url) as proxy:
        assert _tour(proxy.url) == 0
        sent = list(proxy.requests)
    checked = set()
    for record in sent:
        path = record.path.split("?")[0]
        params = _params_for(path)
        if params is None:
            assert path in NO_PEER, f"no weave params type mapped for {path}"
            continue
        skip = frozenset({"entity", "project"}) if path.startswith("/v2/") else frozenset()
        _check_typeddict(msgspec.json.decode(record.body), params, path, skip=skip)
        checked.add(path)
    # the Engine's sender picks /call/upsert_batch or the v2 complete route, not both
    assert set(PARAMS_BY_PATH) - checked <= {"/call/upsert_batch"}
