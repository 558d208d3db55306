"""The malloc settings of the engine's own processes: applied in a process of their own."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_glibc_takes_the_large_buffer_settings():
    # ... without starting a process (ctypes.util.find_library would run `ldconfig -p`
    # in every sender and server at start-up)
    script = ("import subprocess\n"
              "class NoProcess:\n"
              "    def __init__(self, *args, **kwargs): raise AssertionError('a process')\n"
              "subprocess.Popen = NoProcess\n"
              "from engine.common._malloc import tune_for_large_buffers as t\n"
              "print(t())")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "True"
