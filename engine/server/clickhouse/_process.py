"""Run the local ClickHouse server (:mod:`.local_server`) as a child process on a free
loopback port: for tests, benchmarks and trying ``--store clickhouse://`` on one machine."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from engine.server._subprocess import stop_server
from engine.server.clickhouse.local_server import PASSWORD_ENV

_URL_LINE = re.compile(r"listening on http://([\d.]+):(\d+)")


class LocalClickHouse:
    """A running local server: ``store_url(db)`` is what ``engine serve --store`` takes."""

    def __init__(self, proc: subprocess.Popen, host: str, port: int, password: str) -> None:
        self.proc, self.host, self.port, self.password = proc, host, port, password
        # keep draining its output, so the child never blocks on a full pipe
        self._drain = threading.Thread(target=self._read_out, daemon=True)
        self._drain.start()

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        self.proc.stdout.read()
        self.proc.stdout.close()

    def stop(self) -> int:
        code = stop_server(self.proc)
        self._drain.join(10)
        return code

    def store_url(self, database: str, user: str = "default") -> str:
        return f"clickhouse://{user}@{self.host}:{self.port}/{database}"


def start_local_clickhouse(path: Path, password: str = "", timeout_s: float = 60.0,
                           port: int = 0) -> LocalClickHouse:
    """Start the server on ``path`` (a folder) and wait for its readiness line; ``port`` 0
    picks a free one (give the old one to restart a server where its clients look)."""
    env = {**os.environ, PASSWORD_ENV: password}  # the password never goes into argv
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.server.clickhouse.local_server", "--path", str(path),
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:  # the readiness line is the first it prints
        lines.append(line)
        match = _URL_LINE.search(line)
        if match:
            return LocalClickHouse(proc, match[1], int(match[2]), password)
    code = proc.wait(timeout_s)
    raise RuntimeError(f"local ClickHouse server exited ({code}) before listening: {''.join(lines)!r}")


@contextlib.contextmanager
def local_clickhouse(path: Path, password: str = "") -> Iterator[LocalClickHouse]:
    server = start_local_clickhouse(path, password)
    try:
        yield server
    finally:
        server.stop()
