"""``engine relay``'s ring: 64 MiB unless a flag, the environment or the config file says."""

from __future__ import annotations

import glob
import json
import os

import pytest

from engine.relay._app import RELAY_RING_BYTES
from engine.server import serve_subprocess
from tests.relay.harness import relay_subprocess

pytestmark = pytest.mark.integration


def _ring_bytes_of(relay_pid: int) -> int:
    """The relay engine's ring_bytes, from its settings copy beside its ring segment."""
    (copy,) = glob.glob(f"/dev/shm/engine-rings-{relay_pid}-*.json")
    with open(copy) as f:
        return json.load(f)["config"]["ring_bytes"]


def test_the_relays_ring_is_larger_than_a_producers_unless_set(tmp_path):
    config = tmp_path / "engine.toml"
    config.write_text("[engine]\nring_bytes = 4194304\n")
    bare_env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    cases = [((), bare_env, RELAY_RING_BYTES),
             (("--ring-bytes", "8388608"), bare_env, 8 << 20),
             ((), {**bare_env, "ENGINE_RING_BYTES": "2097152"}, 2 << 20),
             (("--config", str(config)), bare_env, 4 << 20)]
    with serve_subprocess(tmp_path / "t.db") as upstream:
        for flags, env, expected in cases:
            with relay_subprocess(upstream, *flags, env=env) as (_url, proc):
                assert _ring_bytes_of(proc.pid) == expected, flags
    assert RELAY_RING_BYTES == 64 << 20
