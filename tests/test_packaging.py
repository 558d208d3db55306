"""The package as users get it: a wheel built from this checkout and installed apart from
the source tree. Every other test imports engine from the checkout, where a file left out
of the wheel (the trace browser's files, the ClickHouse migrations, the C accelerator, the
``ENGINE_WEAVE=1`` hook) is still there; here it is not."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

_USE_IT = textwrap.dedent("""
    import importlib.resources, json, sys, urllib.request
    import engine
    from engine.native import _accel
    from engine.server import serve_subprocess

    site = sys.argv[1]
    assert engine.__file__.startswith(site), engine.__file__
    assert _accel.native is not None, "the wheel has no C accelerator"
    migrations = importlib.resources.files("engine.server.clickhouse") / "migrations"
    assert sorted(p.name for p in migrations.iterdir() if p.name.endswith(".sql"))
    with serve_subprocess(sys.argv[2] + "/traces.db") as url:
        with engine.Engine(url=url, project="pkg/check",
                           dead_letter_path=sys.argv[2] + "/dead.jsonl") as eng:
            tracer = eng.producer()
            for i in range(200):
                with tracer.call("op", inputs={"i": i}) as call:
                    call.output = i
            assert eng.flush(timeout_s=60)
        request = urllib.request.Request(url + "/calls/stream_query", method="POST",
                                         data=json.dumps({"project_id": "pkg/check"}).encode())
        stored = urllib.request.urlopen(request, timeout=30).read().splitlines()
        page = urllib.request.urlopen(url + "/", timeout=30).read()
    print(json.dumps({"stored": len(stored), "browser": b"<html" in page}))
""")


def _checkout_copy(dest: Path) -> Path:
    """The files a clone has (tracked, or new and not ignored): no build/ or in-place .so
    of earlier builds that would hide a file the wheel leaves out."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], check=True, capture_output=True, timeout=60)
    for name in filter(None, listed.stdout.decode().split("\0")):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def test_a_wheel_of_this_checkout_installed_elsewhere_traces_serves_and_has_its_files(tmp_path):
    source = _checkout_copy(tmp_path / "source")
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(wheels), str(source)],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = wheels.glob("engine-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"engine-weave.pth", "_engine_weave_hook.py", "engine/py.typed",
            "engine/server/ui/index.html", "engine/server/ui/app.js"} <= names
    assert any(n.startswith("engine/native/_native.") and n.endswith(".so") for n in names)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--target", str(site), str(wheel)], check=True, capture_output=True,
                   timeout=300)
    # the checkout must not be importable: run elsewhere, the wheel first on the path
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    done = subprocess.run([sys.executable, "-c", _USE_IT, str(site), str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == '{"stored": 200, "browser": true}'
