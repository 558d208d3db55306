"""Run ``engine relay`` as a real child process on port 0 and read its ``/metrics``."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

from engine.server._subprocess import _UrlWatcher, stop_server

_STARTUP_TIMEOUT_S = 30.0


@contextlib.contextmanager
def relay_subprocess(upstream: str, *flags: str, env: dict[str, str] | None = None,
                     with_logs: bool = False) -> Iterator[tuple[str, subprocess.Popen]]:
    """``with relay_subprocess(url, "--linger-ms", "5") as (relay_url, proc):`` — always stopped.
    ``with_logs``: its log lines (stderr) are read into ``proc.output_lines`` too."""
    argv = [sys.executable, "-m", "engine", "relay", "--listen", "127.0.0.1:0",
            "--upstream", upstream, *flags]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env,
                            stderr=subprocess.STDOUT if with_logs else None)
    watcher = _UrlWatcher(proc)
    watcher.start()
    proc.output_lines = watcher.lines  # type: ignore[attr-defined]  # what it printed so far
    try:
        if not watcher.found.wait(_STARTUP_TIMEOUT_S) or watcher.url is None:
            raise RuntimeError(f"engine relay did not start: {''.join(watcher.lines)!r}")
        yield watcher.url, proc
    finally:
        stop_server(proc, timeout_s=60.0)


def metrics(url: str) -> dict[str, float]:
    """``/metrics`` as {sample name: value} (our exposition has no labels)."""
    with urllib.request.urlopen(url + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    samples = (line.split(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {name: float(value) for name, value in samples}


def wait_until(predicate, timeout_s: float, pause_s: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout_s`` passed (conditions on another process)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause_s)
    return True
