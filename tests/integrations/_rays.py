"""What the Ray tests' clusters share: Ray kept on loopback, in a temp dir of the test's own,
and left with nothing behind once stopped (``loopback_ray``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator

import pytest

try:  # the modules importing this one are skipped without Ray, never in CI
    import ray
    from ray.cluster_utils import Cluster
except ImportError:
    if os.environ.get("CI"):
        raise  # CI installs the ray extra: never skip there
    pytest.skip("needs the ray extra (pip install 'engine[ray]')", allow_module_level=True)

__all__ = ["Cluster", "loopback_ray", "ray"]


@contextlib.contextmanager
def loopback_ray(prefix: str) -> Iterator[str]:
    """Around starting and stopping a ``ray.cluster_utils.Cluster``: Ray on loopback only
    (this process's flag, and the variable its processes read) and ``RAY_TMPDIR`` in a temp
    dir (given), all undone after; and this process's SIGTERM handler as it was.

    ``ray.init`` installs a handler of its own (``sys.exit``) that ``ray.shutdown`` does not
    take back. A fork Pool made later in this process inherits it, and a Python handler can
    miss ``Pool.terminate()``'s SIGTERM for good: landing just before the worker blocks on
    its queue's lock, it waits to run until that wait ends, which the terminating parent
    never lets happen (tests/engine/test_nested.py hung so in a clean-clone CI; 1 in ~100
    runs beside two CPU-bound processes). The engine's own handler is never a forked
    worker's (``_sigterm_after_fork``)."""
    import ray._private.ray_constants as ray_constants

    was_enabled, ray_constants.ENABLE_RAY_CLUSTER = ray_constants.ENABLE_RAY_CLUSTER, False
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    temp_dir = tempfile.mkdtemp(prefix=prefix)
    # Ray writes the cluster's address to $RAY_TMPDIR/ray/ray_current_cluster and does not
    # create that folder: keep it in our own temp dir (a fresh machine has no /tmp/ray, and a
    # user's cluster on this box keeps its address file)
    was_tmpdir = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp_dir
    os.makedirs(os.path.join(temp_dir, "ray"), mode=0o700, exist_ok=True)
    was_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        yield temp_dir
    finally:
        if was_sigterm is not None:  # None: set outside Python, nothing to put back
            signal.signal(signal.SIGTERM, was_sigterm)
        _drop_exit_hooks_of_stopped_nodes()
        shutil.rmtree(temp_dir, ignore_errors=True)  # Ray's sockets and logs
        del os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"]
        if was_tmpdir is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = was_tmpdir
        ray_constants.ENABLE_RAY_CLUSTER = was_enabled


def _drop_exit_hooks_of_stopped_nodes() -> None:
    """Ray's in-process ``Cluster`` leaves each node's atexit handler behind, holding the
    node and its GCS client: a child this process forks later (multiprocessing clears the
    atexit handlers there) frees that client, and gRPC kills the child with SIGSEGV (Python
    3.13, ray 2.60; the ring's fork tests after this module crashed so). Once the nodes are
    stopped the handlers have nothing left to do."""
    import atexit
    import gc
    import types

    for obj in gc.get_objects():
        if (isinstance(obj, types.FunctionType)
                and obj.__qualname__ == "Node._register_shutdown_hooks.<locals>.atexit_handler"):
            atexit.unregister(obj)
    gc.collect()  # the nodes' GCS clients go here, in this process
