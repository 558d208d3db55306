"""Run ``engine serve`` as a real child process on port 0 (for tests, benches and the demo)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from engine.common._wait import wait_exit

_URL_LINE = re.compile(r"listening on (https?://\S+)")


class _UrlWatcher(threading.Thread):
    """Drains the child's stdout (so it can never block on a full pipe) and spots its URL."""

    def __init__(self, proc: subprocess.Popen) -> None:
        super().__init__(name="engine-serve-stdout", daemon=True)
        self._proc = proc
        self.url: str | None = None
        self.found = threading.Event()
        self.lines: list[str] = []

    def run(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self.lines.append(line)
            match = _URL_LINE.search(line)
            if match and self.url is None:
                self.url = match.group(1)
                self.found.set()
        self._proc.stdout.close()
        self.found.set()  # EOF: the child exited before (or after) printing its URL


def _serve_argv(
    db_path: Path | str | None, store: str, max_body_bytes: int | None, keys_file: str | None,
    flags: tuple[str, ...] = (),
) -> list[str]:
    argv = [sys.executable, "-m", "engine", "serve", "--host", "127.0.0.1", "--port", "0",
            "--parent-pid", str(os.getpid()), *flags]
    argv += ["--store", store]
    if db_path is not None and store == "sqlite":  # the other stores keep nothing in a file
        argv += ["--db", str(db_path)]
    if max_body_bytes is not None:
        argv += ["--max-body-bytes", str(max_body_bytes)]
    if keys_file is not None:
        argv += ["--keys-file", str(keys_file)]
    return argv


def spawn_server(
    db_path: Path | str | None = None,
    store: str = "sqlite",
    max_body_bytes: int | None = None,
    api_key: str | None = None,
    startup_timeout_s: float = 30.0,
    keys_file: Path | str | None = None,
    flags: tuple[str, ...] = (),
) -> tuple[subprocess.Popen, str]:
    """Start ``engine serve`` on 127.0.0.1 port 0 and return (process, URL) once it listens.
    ``api_key`` reaches it in its environment (``$ENGINE_API_KEY``), never its command line;
    ``flags``: more of its command-line flags; ``db_path`` is the SQLite store's file
    (unused with another ``store``).

    The server runs in its own session: a Ctrl-C at the terminal (SIGINT to the foreground
    process group) reaches this process, which stops the server once it is done with it
    (the demo delivers first); and it stops by itself once this process is gone
    (``--parent-pid``), so even a SIGKILL of this process leaves no server behind."""
    env = None if api_key is None else {**os.environ, "ENGINE_API_KEY": api_key}
    argv = _serve_argv(db_path, store, max_body_bytes, None if keys_file is None else str(keys_file),
                       flags)
    return spawn_listening(argv, startup_timeout_s, env, new_session=True)


def spawn_listening(argv: list[str], startup_timeout_s: float = 30.0,
                    env: dict[str, str] | None = None,
                    new_session: bool = False) -> tuple[subprocess.Popen, str]:
    """Start a server child that prints ``listening on URL`` once it listens (``engine
    serve``, the bench's sinks); (process, URL). Stop it with :func:`stop_server`. A child
    that exits first, or stays silent for ``startup_timeout_s``, raises RuntimeError
    naming its exit status (its own error went to stderr) or the timeout."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env,
                            start_new_session=new_session)
    try:
        watcher = _UrlWatcher(proc)
        watcher.start()
        watcher.found.wait(startup_timeout_s)
        if watcher.url is None:
            raise RuntimeError(_no_url(argv, proc, watcher, startup_timeout_s))
    except BaseException:  # Ctrl-C while it starts too: never leave it running
        stop_server(proc)
        raise
    return proc, watcher.url


def _no_url(argv: list[str], proc: subprocess.Popen, watcher: _UrlWatcher,
            startup_timeout_s: float) -> str:
    what = " ".join(argv[1:4])
    if not watcher.found.is_set():
        output = "".join(watcher.lines)
        return f"{what} did not report its URL within {startup_timeout_s}s: {output!r}"
    try:  # its stdout closed: it is exiting
        code = wait_exit(proc, startup_timeout_s)
    except subprocess.TimeoutExpired:
        return f"{what} closed its output without reporting its URL"
    return f"{what} exited with status {code} before it listened (its own error is on stderr)"


def stop_server(proc: subprocess.Popen, timeout_s: float = 15.0) -> int:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL. Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return wait_exit(proc, timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


@contextlib.contextmanager
def serve_subprocess(
    db_path: Path | str | None = None,
    store: str = "sqlite",
    max_body_bytes: int | None = None,
    api_key: str | None = None,
    keys_file: Path | str | None = None,
    flags: tuple[str, ...] = (),
) -> Iterator[str]:
    """``with serve_subprocess(tmp_path / "t.db") as url:`` — the server is always stopped."""
    proc, url = spawn_server(db_path, store, max_body_bytes, api_key, keys_file=keys_file,
                             flags=flags)
    try:
        yield url
    finally:
        stop_server(proc)
