"""UUIDv7 ids and the route table."""

from __future__ import annotations

import os
import time
import uuid

import msgspec
import pytest

from engine.wire import _codec
from engine.wire.routes import EXTRA_ROUTES, ROUTES

SEED_METHODS = {
    "actions_execute_batch", "call_end", "call_read", "call_start", "call_start_batch",
    "call_update", "calls_delete", "calls_query", "calls_query_stats", "calls_query_stream",
    "completions_create", "completions_create_stream", "cost_create", "cost_purge",
    "cost_query", "ensure_project_exists", "feedback_create", "feedback_purge",
    "feedback_query", "feedback_replace", "file_content_read", "file_create", "files_stats",
    "obj_create", "obj_delete", "obj_read", "objs_query", "op_create", "op_read", "ops_query",
    "otel_export", "project_stats", "refs_read_batch", "server_info", "table_create",
    "table_query", "table_query_stats", "table_query_stats_batch", "table_query_stream",
    "table_update", "threads_query_stream",
}


@pytest.fixture(params=["native", "python"])
def ids_impl(request, monkeypatch):
    """The id tests run on the C accelerator's ids and on the pure-Python ones."""
    impl = _codec.NATIVE_IDS if request.param == "native" else _codec.PY_IDS
    if impl is None:
        pytest.skip("engine.native._native is not built here")
    for name, fn in zip(("uuid7", "uuid7_bytes", "uuid_bytes"), impl):
        monkeypatch.setattr(_codec, name, fn)
    return request.param


def test_uuid7_has_canonical_form_version_variant_and_current_ms(ids_impl):
    before_ms = time.time_ns() // 1_000_000
    ids = [_codec.uuid7() for _ in range(2000)]
    after_ms = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for text in ids:
        u = uuid.UUID(text)
        assert str(u) == text and u.version == 7 and u.variant == uuid.RFC_4122
        assert before_ms <= u.int >> 80 <= after_ms
    prefixes = [uuid.UUID(t).int >> 80 for t in ids]
    assert prefixes == sorted(prefixes)


def test_uuid7_random_bits_are_not_constant(ids_impl):
    rand = [uuid.UUID(_codec.uuid7()).int & ((1 << 76) - 1) for _ in range(64)]
    ored = 0
    for r in rand:
        ored |= r
    anded = ored
    for r in rand:
        anded &= r
    # every non-fixed bit is seen both set and clear
    assert ored == (0x0FFF << 64) | (0b10 << 62) | ((1 << 62) - 1)
    assert anded == 0b10 << 62


def test_uuid7_bytes_are_the_raw_form_of_the_text(ids_impl):
    text, raw = _codec.uuid7_bytes()
    assert uuid.UUID(text).bytes == raw and len(raw) == 16
    assert _codec.uuid_text(raw) == text and _codec.uuid_bytes(text) == raw


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_does_not_repeat_parent_ids(ids_impl):
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next ids and leave without running pytest teardown
        try:
            os.write(write_fd, ",".join(_codec.uuid7() for _ in range(8)).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    parent = [_codec.uuid7() for _ in range(8)]
    with os.fdopen(read_fd, "rb") as pipe:
        child = pipe.read().decode().split(",")
    os.waitpid(pid, 0)
    tails = lambda ids: {i[14:] for i in ids}  # noqa: E731 — the random part only
    assert len(child) == 8 and not tails(child) & tails(parent)


def test_uuid_text_parses_in_either_case_and_without_dashes_and_rejects_the_rest(ids_impl):
    for _ in range(200):
        u = uuid.uuid4()
        for text in (str(u), str(u).upper(), u.hex):
            assert _codec.uuid_bytes(text) == u.bytes
    for bad in ("", "x" * 36, "0193000-00000-7000-8000-000000000000",
                "01930000-0000-7000-8000-00000000000g", "01930000-0000-7000-8000-0000000000"):
        with pytest.raises(ValueError):
            _codec.uuid_bytes(bad)


def test_routes_cover_exactly_the_seed_methods():
    assert set(ROUTES) == SEED_METHODS
    assert not set(EXTRA_ROUTES) & SEED_METHODS


@pytest.mark.parametrize("name", sorted(ROUTES) + sorted(EXTRA_ROUTES))
def test_route_is_well_formed(name):
    route = ROUTES.get(name) or EXTRA_ROUTES[name]
    assert route.path.startswith("/") and route.method in {"GET", "POST", "PUT", "DELETE"}
    assert (route.req is None) == (route.body == "none")
    if route.req is not None:
        assert route.req.__struct_config__.forbid_unknown_fields
    if isinstance(route.res, type) and issubclass(route.res, msgspec.Struct):
        assert not route.res.__struct_config__.forbid_unknown_fields
    if route.fallback is not None:
        assert route.fallback in ROUTES
    assert route.streaming == (route.reply == "jsonl")


def test_streaming_methods_are_marked_streaming():
    assert {n for n, r in ROUTES.items() if r.streaming} == {
        "calls_query", "calls_query_stream", "completions_create_stream",
        "table_query_stream", "threads_query_stream"}
