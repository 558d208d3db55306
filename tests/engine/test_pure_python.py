"""The pure-Python fallback (no C accelerator) delivers end to end, in a process of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.engine.helpers import PROJECT
from tests.faultserver import FaultServer

pytestmark = pytest.mark.integration

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_SCRIPT = """
import json, sys
from engine.native import _accel
from tests.engine.helpers import make_engine, trace_calls
import pathlib
with make_engine(sys.argv[1], pathlib.Path(sys.argv[2])) as eng:
    ids = trace_calls(eng.producer(), 150)
    delivered = eng.flush(timeout_s=60)
    stats = eng.stats()
print(json.dumps({"ids": ids, "delivered": delivered, "native_here": _accel.native is not None,
                  "native_stats": stats["native_accelerator"], "spliced": stats["completes_spliced"],
                  "dead": stats["dead_letters"]}))
"""


@pytest.mark.parametrize("pure", [True, False], ids=["pure-python", "default"])
def test_calls_arrive_with_and_without_the_accelerator(tmp_path, pure):
    env = dict(os.environ, ENGINE_PURE_PYTHON="1" if pure else "0")
    with FaultServer() as server:
        done = subprocess.run([sys.executable, "-c", _SCRIPT, server.url, str(tmp_path)],
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                              timeout=90)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result["delivered"] and result["dead"] == 0
        assert server.stored_ids(PROJECT) == set(result["ids"])
        assert all(server.is_complete(PROJECT, i) for i in result["ids"])
        assert server.duplicate_deliveries() == 0
    assert result["native_here"] is result["native_stats"]
    if pure:
        assert result["native_here"] is False
    # every root and child became one complete item, whoever spliced it (C reader or router)
    assert result["spliced"] == len(result["ids"])


def test_the_producer_tests_also_pass_without_the_accelerator():
    """The tracer's and the user-code tests again with ENGINE_PURE_PYTHON=1: the fallback
    keeps every promise the C path keeps (a closed-during-encode write once slipped by),
    placeholders and counts included. (The ring's tests run on both already.)"""
    env = dict(os.environ, ENGINE_PURE_PYTHON="1")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/engine/test_tracer.py", "tests/engine/test_user_code.py",
         "tests/engine/test_op_inputs.py"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout.splitlines()[-1]
