"""Payload profiles: sizes near their targets, the same data in every process, plain JSON types."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.payloads import PROFILE_NAMES, encoded_size_bytes, profile

_TARGET_BYTES = {"small": 800, "eval": 4096, "large": 100 * 1024}
_SAMPLE = range(0, 400, 7)


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_every_complete_call_is_within_25_percent_of_its_target(name: str) -> None:
    p = profile(name)
    assert p.approx_complete_bytes == _TARGET_BYTES[name]
    sizes = [encoded_size_bytes(p.skeleton_complete_call(i)) for i in _SAMPLE]
    assert all(0.75 * p.approx_complete_bytes <= s <= 1.25 * p.approx_complete_bytes for s in sizes)


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_items_vary_in_content_and_size(name: str) -> None:
    p = profile(name)
    calls = [p.skeleton_complete_call(i) for i in range(20)]
    assert len({json.dumps(c["inputs"]) for c in calls}) == 20
    assert len({encoded_size_bytes(c) for c in calls}) > 1


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_same_index_gives_same_payload(name: str) -> None:
    p = profile(name)
    assert p.skeleton_complete_call(5) == p.skeleton_complete_call(5)
    assert p.inputs(5) is not p.inputs(5)  # fresh objects: callers may mutate them


def test_payloads_are_identical_in_a_fresh_process() -> None:
    script = (
        "import json; from bench.payloads import profile, PROFILE_NAMES;"
        "print(json.dumps([profile(n).skeleton_complete_call(i) for n in PROFILE_NAMES for i in (0, 9)]))"
    )
    other = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    here = [profile(n).skeleton_complete_call(i) for n in PROFILE_NAMES for i in (0, 9)]
    assert json.loads(other.stdout) == here


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_parts_are_plain_json_values(name: str) -> None:
    p = profile(name)
    parts = (p.inputs(3), p.output(3), p.summary(3), p.attributes(3))
    assert [json.loads(json.dumps(part)) for part in parts] == list(parts)


def test_eval_summary_carries_token_usage_per_model() -> None:
    usage = profile("eval").summary(0)["usage"]
    assert len(usage) == 2
    for counts in usage.values():
        assert counts["total_tokens"] == counts["prompt_tokens"] + counts["completion_tokens"]


def test_eval_inputs_hold_chat_messages() -> None:
    messages = profile("eval").inputs(0)["messages"]
    assert [m["role"] for m in messages] == ["system", "user"]


def test_unknown_profile_names_the_choices() -> None:
    with pytest.raises(ValueError, match="small"):
        profile("huge")
