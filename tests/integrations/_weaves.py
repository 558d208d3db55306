"""The weave versions the weave integration is tested with, each in its own venv: 0.54.0 in
the project's (the ``peers`` extra) and 0.53.13 in ``.venv-w53`` (``scripts/test`` builds it
from requirements-w53.lock, the engine installed there too, its ``engine-weave.pth`` with it)."""

import os
import sys
from pathlib import Path

import pytest

from engine.common._env import WEAVE53_PYTHON as WEAVE53_PYTHON_ENV

# a test taking ``weave_minor`` runs once per version
VERSIONS = pytest.mark.parametrize("weave_minor", ["0.54", "0.53"])
# ... and once more with 0.53's older trace server class (its WEAVE_USE_STAINLESS_SERVER=false)
VERSIONS_AND_0_53_LEGACY = pytest.mark.parametrize("weave_minor", ["0.54", "0.53", "0.53-legacy"])


def weave_python(minor: str) -> str:
    """The interpreter whose weave is ``minor``; never guessed, never skipped."""
    if minor == "0.54":
        return sys.executable
    python = os.environ.get(WEAVE53_PYTHON_ENV)
    if not python or not Path(python).exists():
        raise RuntimeError(f"{WEAVE53_PYTHON_ENV} is not set to .venv-w53/bin/python; run the "
                           "tests through scripts/test, which builds it from requirements-w53.lock")
    return python


def weave_env(minor: str) -> dict[str, str]:
    """What a run of ``minor`` adds to its environment."""
    return {"WEAVE_USE_STAINLESS_SERVER": "false"} if minor == "0.53-legacy" else {}
