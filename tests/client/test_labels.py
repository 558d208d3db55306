"""Tags and aliases of object versions through the client (weave 0.54.0's methods), against
a real ``engine serve``: what is set reads back in ``objs_query``, the lists, an alias moves."""

from __future__ import annotations

import asyncio

import pytest

from engine.client import AsyncRemoteHTTPTraceServer
from engine.common._errors import HTTPError

pytestmark = pytest.mark.integration


def _versions(client, project: str, object_id: str) -> list[str]:
    digests = []
    for value in ({"temperature": 0.0}, {"temperature": 0.7}):
        digests.append(client.obj_create({"obj": {"project_id": project, "object_id": object_id,
                                                  "val": value}}).digest)
    return digests


def _labels(client, project: str, object_id: str) -> dict[str, tuple[list, list]]:
    objs = client.objs_query({"project_id": project, "filter": {"object_ids": [object_id]},
                              "include_tags_and_aliases": True}).objs
    return {o.digest: (sorted(o.tags or []), sorted(a for a in o.aliases or [] if a != "latest"))
            for o in objs}


def test_tags_and_aliases_are_set_read_moved_and_removed(client, project):
    v0, v1 = _versions(client, project, "my-model")
    client.obj_add_tags({"project_id": project, "object_id": "my-model", "digest": v0,
                         "tags": ["baseline", "reviewed by ann"]})
    client.obj_set_aliases({"project_id": project, "object_id": "my-model", "digest": v0,
                            "aliases": ["prod"]})
    assert _labels(client, project, "my-model") == {
        v0: (["baseline", "reviewed by ann"], ["prod"]), v1: ([], [])}
    # an alias names one version: set on v1, it leaves v0
    client.obj_set_aliases({"project_id": project, "object_id": "my-model", "digest": v1,
                            "aliases": ["prod", "candidate"]})
    assert _labels(client, project, "my-model") == {
        v0: (["baseline", "reviewed by ann"], []), v1: ([], ["candidate", "prod"])}
    assert sorted(client.tags_list({"project_id": project}).tags) == ["baseline", "reviewed by ann"]
    assert sorted(client.aliases_list({"project_id": project}).aliases) == ["candidate", "latest", "prod"]

    client.obj_remove_tags({"project_id": project, "object_id": "my-model", "digest": v0,
                            "tags": ["baseline"]})
    client.obj_remove_aliases({"project_id": project, "object_id": "my-model",
                               "aliases": ["candidate"]})
    assert _labels(client, project, "my-model") == {
        v0: (["reviewed by ann"], []), v1: ([], ["prod"])}


def test_a_bad_label_or_a_missing_version_is_a_clear_error(client, project):
    (v0, _) = _versions(client, project, "m")
    with pytest.raises(HTTPError) as bad:
        client.obj_add_tags({"project_id": project, "object_id": "m", "digest": v0,
                             "tags": ["no/slashes"]})
    assert bad.value.status == 400 and "no/slashes" in str(bad.value)
    with pytest.raises(HTTPError) as reserved:
        client.obj_set_aliases({"project_id": project, "object_id": "m", "digest": v0,
                                "aliases": ["latest"]})
    assert reserved.value.status == 400 and "reserved" in str(reserved.value)
    with pytest.raises(HTTPError) as missing:
        client.obj_add_tags({"project_id": project, "object_id": "m", "digest": "0" * 64,
                             "tags": ["x"]})
    assert missing.value.status == 404
    assert _labels(client, project, "m")[v0] == ([], [])  # nothing half-applied


def test_the_async_client_has_the_same_methods(client, server_url, project):
    v0, v1 = _versions(client, project, "prompt")

    async def main() -> tuple[list[str], list[str]]:
        async with AsyncRemoteHTTPTraceServer(server_url) as aclient:
            await aclient.obj_add_tags({"project_id": project, "object_id": "prompt",
                                        "digest": v1, "tags": ["short"]})
            await aclient.obj_set_aliases({"project_id": project, "object_id": "prompt",
                                           "digest": v0, "aliases": ["stable"]})
            tags = (await aclient.tags_list({"project_id": project})).tags
            aliases = (await aclient.aliases_list({"project_id": project})).aliases
            await aclient.obj_remove_tags({"project_id": project, "object_id": "prompt",
                                           "digest": v1, "tags": ["short"]})
            await aclient.obj_remove_aliases({"project_id": project, "object_id": "prompt",
                                              "aliases": ["stable"]})
            return tags, aliases

    tags, aliases = asyncio.run(main())
    assert tags == ["short"] and sorted(aliases) == ["latest", "stable"]
    assert _labels(client, project, "prompt") == {v0: ([], []), v1: ([], [])}
