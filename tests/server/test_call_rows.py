"""Stored call rows as the dicts reads answer: the C path (engine/native/_rows.c) makes the
dicts row_to_call makes, and engine serve streams the same bytes with or without it."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import urllib.request

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.native import _accel
from engine.server import stop_server
from engine.server._limits import MAX_TIME_US, MIN_TIME_US
from engine.server._rows import (
    _CALL_KEYS,
    _KINDS,
    SELECT_COLUMNS,
    _take_rows,
    from_us,
    row_to_call,
)
from engine.server._subprocess import _serve_argv, spawn_listening
from tests.server.harness import PROJECT, complete, end, start

native = _accel.native
pytestmark = pytest.mark.skipif(native is None, reason="the C accelerator is not built here")

_JSON = {"attributes", "inputs", "otel_dump", "output", "summary"}
_times = st.one_of(
    st.integers(MIN_TIME_US - 10**12, MAX_TIME_US + 10**12),  # around datetime's range
    st.integers(-(2**63), 2**63 - 1),  # whatever SQLite's INTEGER holds
    st.integers(-(10**14), 10**14),  # around the epoch, days before and after it
    st.floats(-1e15, 1e15, allow_nan=False),  # not an int: left to from_us
    st.none(),
)
_json_text = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
).map(lambda v: msgspec.json.encode(v).decode())
_json_values = st.one_of(st.none(), _json_text, _json_text.map(str.encode))


def _column(name: str) -> st.SearchStrategy:
    if name.endswith("_at_us"):
        return _times
    if name in _JSON:
        return _json_values
    return st.one_of(st.none(), st.text(max_size=10), st.integers(-(2**63), 2**63 - 1))


_rows = st.tuples(*(_column(c) for c in SELECT_COLUMNS))


@settings(max_examples=400, deadline=None)
@given(st.lists(_rows, max_size=4))
def test_c_rows_are_row_to_call_dicts(rows):
    made = native.call_dicts(rows, _CALL_KEYS, _KINDS, msgspec.Raw, from_us)
    expected = [row_to_call(row) for row in rows]
    assert made == expected
    assert [list(c) for c in made] == [list(c) for c in expected]  # key order: the answer's
    assert msgspec.json.encode(made) == msgspec.json.encode(expected)


def test_a_row_of_the_wrong_shape_is_a_value_error():
    good = tuple(None for _ in SELECT_COLUMNS)
    for bad in ([good[:-1]], [list(good)]):
        with pytest.raises(ValueError, match="a row must be a tuple of 20 values"):
            native.call_dicts(bad, _CALL_KEYS, _KINDS, msgspec.Raw, from_us)


_SIZED = tuple(i for i, c in enumerate(SELECT_COLUMNS) if c in _JSON)


@settings(max_examples=300, deadline=None)
@given(st.lists(_rows, max_size=8), st.integers(1, 9), st.integers(0, 60), st.booleans())
def test_c_take_rows_takes_what_python_takes(rows, want, max_bytes, as_lists):
    """Chunks bounded in rows and in the bytes (or characters) of the JSON values, the row
    passing the limit the last, out of a cursor's tuples or a block's lists."""
    rows = [list(r) for r in rows] if as_lists else rows
    c_rows, py_rows = iter(rows), iter(rows)
    c_chunks, py_chunks = [], []
    for _ in range(len(rows) + 1):  # bounded: every chunk but the last takes a row
        c_chunks.append(native.take_rows(c_rows, want, max_bytes, _SIZED))
        py_chunks.append(_take_rows(py_rows, want, max_bytes, _SIZED))
        if c_chunks[-1][1]:
            break
    assert c_chunks == py_chunks
    assert c_chunks[-1][1] and [r for chunk, _ in c_chunks for r in chunk] == rows


def test_take_rows_refuses_an_index_past_a_row():
    with pytest.raises(IndexError, match="an index of sized is past a row"):
        native.take_rows(iter([(None,)]), 5, 10, (3,))


def _stream(url: str) -> bytes:
    request = urllib.request.Request(
        url + "/calls/stream_query", data=msgspec.json.encode({"project_id": PROJECT}),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        return response.read()


def _post(url: str, path: str, body: dict) -> None:
    request = urllib.request.Request(url + path, data=msgspec.json.encode(body),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200


def _calls() -> list[dict]:
    plain = [complete(f"c{i:04d}", t_s=i / 7) for i in range(250)]
    unusual = [
        complete("unicode", t_s=300, inputs={"q": "é \u2028 \U0001f600 \\\" </script>"}),
        complete("error", t_s=301, exception="ValueError: no", display_name=""),
        complete("named", t_s=302, display_name="mine", wb_run_step=3, wb_run_step_end=4),
        complete("otel", t_s=303, otel_dump={"name": "span", "attributes": {"k": [1, 2.5]}}),
        {**start("running", t_s=304)},
        {**complete("weave_summary", t_s=305),
         **end("weave_summary", t_s=305.0001, summary={"weave": {"status": "x", "kept": 1},
                                                         "status_counts": {"error": 2}})},
    ]  # fmt: skip
    return plain + unusual


def test_engine_serve_streams_the_same_bytes_with_and_without_the_accelerator(tmp_path):
    db_path = tmp_path / "traces.db"
    argv = _serve_argv(db_path, "sqlite", None, None)
    proc, url = spawn_listening(argv)
    try:
        _post(url, "/v2/ent/proj/calls/complete", {"batch": _calls()[:-2]})
        _post(url, "/call/start", {"start": _calls()[-2]})
        _post(url, "/v2/ent/proj/calls/complete", {"batch": _calls()[-1:]})
    finally:
        stop_server(proc)
    # a time only an older server could store (closing: a bare `with` only commits)
    with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute("UPDATE calls SET ended_at_us = ? WHERE id = 'c0001'", (MAX_TIME_US + 10**9,))
    answers = []
    for pure in ("0", "1"):
        proc, url = spawn_listening(argv, env={**os.environ, "ENGINE_PURE_PYTHON": pure})
        try:
            answers.append(_stream(url))
        finally:
            stop_server(proc)
    native_answer, pure_answer = answers
    assert native_answer == pure_answer
    lines = [msgspec.json.decode(line) for line in native_answer.splitlines()]
    assert len(lines) == 256 and lines[1]["ended_at"] == "9999-12-31T23:59:59.999999Z"
    by_id = {call["id"]: call for call in lines}
    assert by_id["unicode"]["inputs"]["q"] == "é \u2028 \U0001f600 \\\" </script>"
    assert by_id["running"]["ended_at"] is None and by_id["error"]["display_name"] is None
    assert by_id["otel"]["attributes"]["otel_span"]["attributes"] == {"k": [1, 2.5]}
    assert by_id["weave_summary"]["summary"]["weave"] == {
        "kept": 1, "status": "descendant_error", "latency_ms": 0,
        "trace_name": "predict"}  # fmt: skip
