"""Suite-wide settings: no test writes into the real user's state directory.

Engines started without ``dead_letter_path`` write dead letters under
``$XDG_STATE_HOME/engine/``; the whole session (and every process it starts) gets a
private one, removed at the end. Tests of the default paths themselves use
``tests.pipeline.Sandbox``.
"""

import os
import shutil
import tempfile

_STATE_HOME = tempfile.mkdtemp(prefix="engine-tests-state-")


def pytest_configure(config):
    os.environ["XDG_STATE_HOME"] = _STATE_HOME


def pytest_unconfigure(config):
    shutil.rmtree(_STATE_HOME, ignore_errors=True)
