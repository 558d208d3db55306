"""``examples/every_method.py`` gets a typed answer from every seed method."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.wire.routes import SEED_METHODS

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "every_method.py"
CLIENT_SIDE = {"from_env", "set_auth", "get_call_processor"}


def test_every_method_script_answers_each_seed_method(server_url, tmp_path):
    env = {**os.environ, "WF_TRACE_SERVER_URL": server_url, "NETRC": str(tmp_path / "none")}
    env.pop("WANDB_API_KEY", None)
    done = subprocess.run([sys.executable, str(SCRIPT), server_url], capture_output=True,
                          text=True, timeout=110, env=env)
    printed = {line.split()[0] for line in done.stdout.splitlines() if line.strip()}
    assert done.returncode == 0, done.stdout + done.stderr
    assert printed >= SEED_METHODS | CLIENT_SIDE
