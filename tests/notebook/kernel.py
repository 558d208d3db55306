"""A real Jupyter kernel (ipykernel) in a process of its own, driven over its ZMQ protocol
by jupyter_client as a notebook front end drives it: cells are ``execute_request``s, an
interrupt is the kernel manager's SIGINT, a restart and a shutdown are the manager's own.

Everything the kernel and the manager write (connection file, IPython's history, Jupyter's
runtime and data folders, weave's caches under ``HOME``) goes under the test's folder; the
kernel is this test run's Python with the checkout on ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

ROOT = Path(__file__).resolve().parents[2]
KERNEL_NAME = "engine-test"
START_TIMEOUT_S = 60.0


@dataclass
class Cell:
    """What one execute_request produced: the reply's status, the streams and the error."""

    status: str = ""
    stdout: str = ""
    stderr: str = ""
    ename: str = ""
    traceback: str = ""
    took_s: float = 0.0
    outputs: list[str] = field(default_factory=list)  # display data / execute results

    def json_lines(self) -> list[dict]:
        """Every stdout line that is a JSON object (what the cells print for the test)."""
        return [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]

    def last(self) -> dict:
        found = self.json_lines()
        assert found, f"the cell printed no JSON line: {self}"
        return found[-1]


def kernel_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The kernel's environment: this process's, the checkout importable, every Jupyter and
    IPython folder (and HOME) under ``tmp_path``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JUPYTER_", "IPYTHON", "JPY_", "ENGINE_", "WANDB_", "WEAVE_",
                                "WF_"))}  # fmt: skip
    paths = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env.update(
        PYTHONPATH=os.pathsep.join(dict.fromkeys(paths)),
        HOME=str(tmp_path / "home"),
        IPYTHONDIR=str(tmp_path / "ipython"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "jupyter-runtime"),
        JUPYTER_DATA_DIR=str(tmp_path / "jupyter-data"),
        JUPYTER_CONFIG_DIR=str(tmp_path / "jupyter-config"),
        JUPYTER_PLATFORM_DIRS="1",
        PYDEVD_DISABLE_FILE_VALIDATION="1",
    )
    env.update(extra)
    return env


class Kernel:
    """``with Kernel(tmp_path, env) as kernel: kernel.run("print(1)")`` -- the kernel is always
    shut down (killed if it does not go), and only it."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        kernels = tmp_path / "kernels"
        spec_dir = kernels / KERNEL_NAME
        spec_dir.mkdir(parents=True, exist_ok=True)
        (spec_dir / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "engine test", "language": "python",
            "interrupt_mode": "signal",  # what `ipykernel install` writes on POSIX
        }))
        for folder in ("home", "ipython", "jupyter-runtime", "jupyter-data", "jupyter-config"):
            (tmp_path / folder).mkdir(exist_ok=True)
        self.env = env
        # the kernel process's own stdout and stderr (the engine's log lines, its sender's
        # exit line, anything printed to sys.__stderr__), restarts included
        self.log_path = tmp_path / "kernel-process.log"
        self._log = None
        self.manager = KernelManager(
            kernel_name=KERNEL_NAME,
            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]),
            connection_file=str(tmp_path / "jupyter-runtime" / "kernel-test.json"),
        )
        self.client = None

    def start(self) -> Kernel:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.manager.start_kernel(env=self.env, cwd=self.env["HOME"], stdout=self._log,
                                  stderr=self._log)
        self._connect()
        return self

    def _connect(self) -> None:
        if self.client is not None:
            self.client.stop_channels()
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=START_TIMEOUT_S)

    @property
    def pid(self) -> int:
        return self.manager.provisioner.pid

    def __enter__(self) -> Kernel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(now=True)

    def stop(self, now: bool = False) -> None:
        """Shut the kernel down (``now``: kill it) and wait until its process is gone."""
        if self.client is not None:
            self.client.stop_channels()
            self.client = None
        if self.manager.has_kernel:
            self.manager.shutdown_kernel(now=now)
        if self._log is not None:
            self._log.close()
            self._log = None

    def process_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def restart(self) -> None:
        """A front end's "Restart kernel": a graceful shutdown, then a new kernel process."""
        self.manager.restart_kernel(now=False)
        self._connect()

    def interrupt(self) -> None:
        self.manager.interrupt_kernel()

    def submit(self, code: str) -> str:
        return self.client.execute(code, allow_stdin=False)

    def run(self, code: str, timeout_s: float = 30.0) -> Cell:
        return self.collect(self.submit(code), timeout_s)

    def wait_output(self, msg_id: str, text: str, timeout_s: float, cell: Cell) -> None:
        """Reads the cell's messages into ``cell`` until its stdout holds ``text``."""
        deadline = time.monotonic() + timeout_s
        while text not in cell.stdout:
            if not self._read(msg_id, cell, deadline):
                raise AssertionError(f"the cell finished without printing {text!r}: {cell}")

    def collect(self, msg_id: str, timeout_s: float, cell: Cell | None = None) -> Cell:
        """Reads the cell's messages until the kernel is idle again, then its reply."""
        cell = cell or Cell()
        started = time.monotonic()
        deadline = started + timeout_s
        while self._read(msg_id, cell, deadline):
            pass
        reply = self.client.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.client.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
        cell.status = reply["content"]["status"]
        cell.took_s = time.monotonic() - started
        return cell

    def _read(self, msg_id: str, cell: Cell, deadline: float) -> bool:
        """One IOPub message of the cell into ``cell``; False once the kernel went idle."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the kernel did not finish the cell in time: {cell}")
            try:
                msg = self.client.get_iopub_msg(timeout=left)
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                break
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            if content["name"] == "stdout":
                cell.stdout += content["text"]
            else:
                cell.stderr += content["text"]
        elif kind == "error":
            cell.ename = content["ename"]
            cell.traceback = "\n".join(content["traceback"])
        elif kind in ("execute_result", "display_data"):
            cell.outputs.append(content["data"].get("text/plain", ""))
        elif kind == "status" and content["execution_state"] == "idle":
            return False
        return True
