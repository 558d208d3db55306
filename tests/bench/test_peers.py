"""Peer drivers end to end against the loopback stub sink: calls delivered, one JSON line."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.peers, pytest.mark.integration]

_REPO = Path(__file__).resolve().parents[2]
_N_CALLS = 40
_REPORT_FIELDS = {
    "contender", "mode", "profile", "calls_offered", "calls_enqueued", "distinct_payloads",
    "loop_wall_s", "loop_cpu_us_per_call", "loop_main_thread_cpu_us_per_call",
    "enqueue_calls_per_s", "flush_s", "calls_per_s", "process_cpu_us_per_call",
    "calls_stored", "calls_lost", "timed_out", "error", "peak_rss_kib", "versions",
}  # fmt: skip


def _load_stub():  # by path: this test directory is not a package
    spec = importlib.util.spec_from_file_location(
        "weave_sink_stub", Path(__file__).with_name("weave_sink_stub.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_stub = _load_stub()


def _weave_available() -> bool:
    try:
        import weave  # noqa: F401
    except Exception:
        return False
    return True


needs_weave = pytest.mark.skipif(not _weave_available(), reason="weave==0.54.0 is not importable")


@pytest.fixture
def sink() -> Iterator[_stub.StubSink]:
    with _stub.StubSink() as s:
        yield s


def _drive(
    module: str, url: str, mode: str, tmp_path: Path, *extra: str, env: dict[str, str] | None = None
) -> tuple[int, dict]:
    """Run a driver in a fresh process (cwd a temp dir, so peer droppings stay out of the repo)."""
    argv = [
        sys.executable,
        "-m",
        module,
        "--url",
        url,
        "--calls",
        str(_N_CALLS),
        "--mode",
        mode,
        *extra,
    ]
    full_env = {**os.environ, "PYTHONPATH": str(_REPO), "HOME": str(tmp_path), **(env or {})}
    done = subprocess.run(
        argv, cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=100
    )
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, (
        f"expected one JSON line on stdout, got {done.stdout!r}; stderr: {done.stderr[-2000:]}"
    )
    return done.returncode, json.loads(lines[0])


def _assert_all_delivered(report: dict, sink: _stub.StubSink) -> None:
    assert set(report) == _REPORT_FIELDS
    assert report["error"] is None and report["timed_out"] is False
    assert report["calls_enqueued"] == _N_CALLS
    assert report["calls_stored"] == _N_CALLS and report["calls_lost"] == 0
    assert sink.calls_stored() == _N_CALLS
    assert report["loop_cpu_us_per_call"] > 0 and report["calls_per_s"] > 0


@needs_weave
def test_weave_batched_sends_every_call_on_the_complete_path(sink, tmp_path) -> None:
    code, report = _drive(
        "bench.peers.weave_client", sink.url, "batched", tmp_path, "--count-url", sink.count_url
    )
    assert code == 0
    _assert_all_delivered(report, sink)
    assert report["versions"]["weave"] == "0.54.0"
    assert "/v2/*/*/calls/complete" in sink.requests_by_route


@needs_weave
def test_weave_batched_legacy_path_sends_upsert_batches(sink, tmp_path) -> None:
    code, report = _drive(
        "bench.peers.weave_client", sink.url, "batched", tmp_path, "--count-url", sink.count_url,
        env={"WEAVE_USE_CALLS_COMPLETE": "false"},
    )  # fmt: skip
    assert code == 0
    _assert_all_delivered(report, sink)
    assert set(sink.requests_by_route) == {"/call/upsert_batch"}


@needs_weave
def test_weave_op_runs_offline_against_the_sink_and_delivers_every_call(sink, tmp_path) -> None:
    code, report = _drive(
        "bench.peers.weave_client",
        sink.url,
        "op",
        tmp_path,
        "--count-url",
        sink.count_url,
        "--profile",
        "small",
    )
    assert code == 0
    _assert_all_delivered(report, sink)
    assert report["profile"] == "small"


@needs_weave
def test_weave_driver_gives_up_at_its_timeout_and_still_reports(tmp_path) -> None:
    with _stub.StubSink(stall_ingest=True) as stalled:
        code, report = _drive(
            "bench.peers.weave_client", stalled.url, "batched", tmp_path, "--timeout-s", "4"
        )
    assert code == 3
    assert report["timed_out"] is True and report["flush_s"] is None
    # How far the loop got before the deadline depends on the machine; the flush never can.
    assert report["calls_enqueued"] <= _N_CALLS


@pytest.mark.parametrize("mode", ["complete", "startend"])
def test_naive_posts_each_call_and_delivers_all(sink, tmp_path, mode) -> None:
    code, report = _drive(
        "bench.peers.naive", sink.url, mode, tmp_path, "--count-url", sink.count_url
    )
    assert code == 0
    _assert_all_delivered(report, sink)
    expected_posts = {"complete": {"/v2/*/*/calls/complete": _N_CALLS},
                      "startend": {"/call/start": _N_CALLS, "/call/end": _N_CALLS}}[mode]  # fmt: skip
    assert sink.requests_by_route == expected_posts


def test_naive_reports_a_refused_connection_as_an_error(tmp_path) -> None:
    with _stub.StubSink() as s:
        url = s.url  # a port that is closed once the sink stops
    code, report = _drive("bench.peers.naive", url, "complete", tmp_path)
    assert code == 1
    assert "ConnectionRefusedError" in report["error"]


@needs_weave
def test_weave_batched_against_engine_serve_counts_every_call(tmp_path) -> None:
    from engine.server._subprocess import serve_subprocess

    with serve_subprocess(tmp_path / "t.db", store="count") as url:
        code, report = _drive(
            "bench.peers.weave_client", url, "batched", tmp_path, "--count-url", f"{url}/stats"
        )
    assert code == 0
    assert report["calls_stored"] == _N_CALLS and report["calls_lost"] == 0
