"""The malloc settings of the engine's own processes: applied in a process of their own."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_glibc_takes_the_large_buffer_settings():
    script = "from engine.common._malloc import tune_for_large_buffers as t; print(t())"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "True"
