"""Suite-wide settings: no test writes into the real user's state directory.

Engines started without ``dead_letter_path`` write dead letters under
``$XDG_STATE_HOME/engine/``; the whole session (and every process it starts) gets a
private one, removed at the end. Tests of the default paths themselves use
``tests.pipeline.Sandbox``.

Signal tests send SIGINT (Ctrl-C) to the processes they start. A suite launched as a
background job of a non-interactive shell (``scripts/test &``, some CI runners) inherits
SIGINT *ignored*, every child would inherit that too, and the engine rightly leaves an
ignored disposition alone, so those tests would wait for an exit that never comes. The
session puts Python's default handler back; its children then start with SIGINT at its
default (a handler, unlike SIG_IGN, is not inherited across exec).

Under pytest-xdist (``scripts/test`` runs the suite on 2 worker processes) every worker
imports this file: each has a state directory of its own and removes only that one.

Engines spool what they cannot deliver under ``$XDG_STATE_HOME/engine/spool/<server>``
by default, and the next engine toward the same URL sends it: after every test that
folder is removed, so a later test whose server got the same port is not sent an earlier
test's calls.

After every test, ``tests.ring_leaks`` fails it if it left ring sets behind (an engine
killed with its sender, whose calls the next engine for a reused port would recover): they
are named with what they hold, and removed.

A test that times out (pytest-timeout) gets a section naming the processes this one
started that were still alive, with their states and signal masks (``tests.stuck``): the
timeout's own dump shows only this process's threads. Those the test started are then
killed: they lived on for the rest of the run, and past it.
"""

import contextlib
import os
import pwd
import shutil
import signal
import tempfile

import pytest

from tests.ring_leaks import RingLeakCheck
from tests.stuck import describe_descendants, kill_started_since

_STATE_HOME = tempfile.mkdtemp(prefix="engine-tests-state-")


def pytest_configure(config):
    os.environ["XDG_STATE_HOME"] = _STATE_HOME
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:  # nohup: the SIGHUP tests' children
        signal.signal(signal.SIGHUP, signal.SIG_DFL)  # would inherit it and never see theirs
    # the default dead-letter file of this worker's engines is under its state home
    config.pluginmanager.register(RingLeakCheck(config, lambda: [_STATE_HOME]), "ring-leaks")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and "Timeout" in str(report.longrepr):
        described = describe_descendants()
        killed = kill_started_since(call.start)  # not a module's server started before it
        report.sections.append(("processes this test left running at the timeout",
                                f"{described}\nkilled (started by this test): {killed}"))


def pytest_unconfigure(config):
    shutil.rmtree(_STATE_HOME, ignore_errors=True)


# the real user's state directory, as it was before this session put its own in its place
_REAL_STATE = os.path.join(os.environ.get("XDG_STATE_HOME")
                           or os.path.join(pwd.getpwuid(os.getuid()).pw_dir, ".local", "state"),
                           "engine")


def _real_state_entries() -> set[str]:
    found = set()
    for folder in (_REAL_STATE, os.path.join(_REAL_STATE, "spool")):
        with contextlib.suppress(OSError):
            found.update(os.path.join(folder, name) for name in os.listdir(folder))
    return found


@pytest.fixture(autouse=True)
def _forget_default_spools():
    before = _real_state_entries()
    yield
    shutil.rmtree(os.path.join(_STATE_HOME, "engine", "spool"), ignore_errors=True)
    # a program started with an environment of its own and no XDG_STATE_HOME (no HOME: the
    # password database's) writes there: tests.pipeline.bare_env gives it this session's
    made = sorted(_real_state_entries() - before)
    for path in made:
        shutil.rmtree(path, ignore_errors=True)
    if made:
        pytest.fail(f"a program of this test (or of another xdist worker's) wrote into the "
                    f"real user's state directory: {made}; start it with XDG_STATE_HOME "
                    "(tests.pipeline.bare_env)")
