"""The weave integration on a weave it was not built for never breaks the program: a weave
without its hook points is left as it is (one warning naming what is missing; weave sends
its traces itself), and one that has them all is installed with a warning."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.server import serve_subprocess
from tests.integrations._weaves import weave_python
from tests.integrations.test_weave_integration import _run_program, _weave_env
from tests.server.fidelity.backends import reference_python

pytestmark = [pytest.mark.peers, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
_PROGRAM = textwrap.dedent(
    """
    import sys
    {before}
    import weave
    {after}
    weave.init(sys.argv[1])

    @weave.op
    def add(a: int, b: int) -> int:
        return a + b

    assert [add(i, 1) for i in range(5)] == [1, 2, 3, 4, 5]
    {tail}
    weave.finish()
    print("done")
    """
)


def _program(tmp_path, before: str = "", after: str = "", tail: str = "") -> str:
    path = tmp_path / "program.py"
    path.write_text(_PROGRAM.format(before=before, after=after, tail=tail))
    return str(path)


def _run_stored(tmp_path, program: str, project: str) -> tuple[str, int]:
    """Runs ``program`` (weave 0.54.0, the integration installed by the program itself)
    against a fresh ``engine serve``: (its stderr, how many calls the project holds)."""
    with serve_subprocess(tmp_path / "t.db") as url:
        env = _weave_env(url, str(tmp_path), enable_env=False)
        env.update(WEAVE_SERVER_CACHE_DIR=str(tmp_path / "cache"))
        result = _run_program([sys.executable, program, project], env)
        assert result.returncode == 0 and "done" in result.stdout, result.stderr[-3000:]
        return result.stderr, _count(url, project)


def _count(url: str, project: str) -> int:
    from engine.client import RemoteHTTPTraceServer

    with RemoteHTTPTraceServer(url) as client:
        return client.calls_query_stats({"project_id": project}).count


def test_weave_0_52_with_engine_weave_set_runs_unchanged(tmp_path):
    """weave 0.52.42 (the reference venv's) lacks hook points: ENGINE_WEAVE=1 leaves it as
    it is, says so once, and every call still reaches the server through weave's client."""
    program = _program(tmp_path)
    with serve_subprocess(tmp_path / "t.db") as url:
        env = _weave_env(url, str(tmp_path), enable_env=True)
        env.update(PYTHONPATH=str(REPO), WEAVE_SERVER_CACHE_DIR=str(tmp_path / "cache"))
        # what engine-weave.pth does at interpreter start (the reference venv lacks it)
        argv = [reference_python(), "-c", "import _engine_weave_hook, runpy, sys; "
                "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')",
                program, "acme/old-weave"]
        result = _run_program(argv, env)
        assert result.returncode == 0 and "done" in result.stdout, result.stderr[-3000:]
        said = [line for line in result.stderr.splitlines() if "engine's weave integration" in line]
        assert len(said) == 1, result.stderr[-3000:]
        assert "weave 0.52.42 lacks" in said[0] and "weave.vendor.weave_server_sdk.types" in said[0]
        assert "weave sends its traces itself" in said[0]
        assert _count(url, "acme/old-weave") == 5


def test_a_missing_hook_point_leaves_weave_as_it_is(tmp_path):
    """weave 0.54.0 as if it lacked a hook point (one more asked for): install() answers
    False, the program runs, its calls arrive all the same."""
    program = _program(tmp_path, after=(
        "import engine.integrations.weave as ew\n"
        "ew._HOOK_POINTS += (('weave.trace.weave_client', 'WeaveClient.no_such_hook'),)\n"
        "assert ew.install() is False and ew.install() is False\n"))
    err, stored = _run_stored(tmp_path, program, "acme/no-hook")
    assert err.count("weave.trace.weave_client:WeaveClient.no_such_hook") == 1, err[-3000:]
    assert stored == 5


def test_on_a_system_other_than_linux_weave_is_left_as_it_is(tmp_path):
    """The engine runs on Linux only (engine.common._machine.platform_problem): elsewhere
    install() answers False with one warning, and weave sends its calls itself."""
    program = _program(tmp_path, after=(
        "sys.platform = 'darwin'  # as on a Mac, once weave is imported\n"
        "import engine.integrations.weave as ew\n"
        "assert ew.install() is False and ew.install() is False\n"),
        tail="assert ew.installed_engine() is None")
    err, stored = _run_stored(tmp_path, program, "acme/not-linux")
    said = [line for line in err.splitlines() if "the engine runs on Linux" in line]
    assert len(said) == 1 and "'darwin'" in said[0] and "weave sends its traces itself" in said[0], err[-3000:]
    assert stored == 5


def test_another_version_with_every_hook_point_is_installed_with_a_warning(tmp_path):
    program = _program(tmp_path, after=(
        "weave.__version__ = '0.55.0'\n"
        "import engine.integrations.weave as ew\n"
        "assert ew.install() is True\n"),
        tail="assert ew.installed_engine() is not None  # the calls went through the engine")
    err, stored = _run_stored(tmp_path, program, "acme/newer")
    assert "weave 0.55.0: the engine's weave integration is tested with weave 0.53.x or " \
           "0.54.x; installed" in err
    assert stored == 5


def test_a_trace_server_class_the_integration_did_not_replace_is_said_once(tmp_path):
    """A weave that builds its server from another class (as 0.53 does by default, before
    the integration replaced that one too) would bypass the engine unnoticed: said once."""
    program = _program(tmp_path, after=(
        "import engine.integrations.weave as ew\n"
        "from weave.trace_server_bindings import remote_http_trace_server as r\n"
        "weaves_own = r.RemoteHTTPTraceServer\n"
        "assert ew.install() is True\n"
        "r.RemoteHTTPTraceServer = weaves_own  # as if weave used a class not replaced\n"))
    err, stored = _run_stored(tmp_path, program, "acme/bypass")
    said = [line for line in err.splitlines() if "built its trace server" in line]
    assert len(said) == 1 and "from RemoteHTTPTraceServer, which the engine's weave " \
        "integration does not replace: its calls go through weave's own client" in said[0]
    assert stored == 5


def test_the_hook_never_raises_into_import_weave(tmp_path):
    """An integration that cannot even be imported costs a warning at ``import weave``, not
    the program (here the import is made to fail; ENGINE_WEAVE=1 and the installed
    engine-weave.pth, as users run it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENGINE_", "WEAVE_", "WF_"))}
    env["ENGINE_WEAVE"] = "1"
    code = ("import sys; sys.modules['engine.integrations.weave'] = None\n"
            "import weave; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
    assert "ENGINE_WEAVE is set but the engine's weave integration could not be installed " \
           "(ModuleNotFoundError: import of engine.integrations.weave halted" in result.stderr


def test_a_weave_without_either_way_to_renew_http_clients_after_fork_is_left_as_it_is(tmp_path):
    """0.54 rebuilds a server's client, 0.53 clears its cached one: a hook point either
    satisfies; a weave with neither is named with both."""
    code = ("import engine.integrations.weave as ew\n"
            "from weave.trace_server_bindings.remote_http_trace_server import "
            "RemoteHTTPTraceServer as S\n"
            "assert ew.missing_hook_points() == []\n"
            "del S._rebuild_client\n"
            "assert ew.missing_hook_points() == []  # 0.53's way is there in 0.54 too\n"
            "import weave.utils.http_requests as h\n"
            "h._build_client = None\n"
            "print(ew.missing_hook_points())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == str([  # (0.54's deprecated Stainless name: the same class)
        "weave.trace_server_bindings.remote_http_trace_server:RemoteHTTPTraceServer."
        "_rebuild_client or weave.utils.http_requests:_build_client.cache_clear"])


def test_engine_doctor_says_weave_0_53_fits(tmp_path):
    with serve_subprocess(tmp_path / "t.db") as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ENGINE_", "WEAVE_"))}
        result = subprocess.run([weave_python("0.53"), "-m", "engine", "doctor", url,
                                 "--limit-mib", "1"], env=env, capture_output=True, text=True,
                                timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(x for x in result.stdout.splitlines() if "weave integration" in x)
    assert line.strip().startswith("ok") and "weave 0.53.13: ENGINE_WEAVE=1 sends its calls " \
        "through the engine" in line, line


def test_engine_doctor_names_what_an_older_weave_lacks(tmp_path):
    with serve_subprocess(tmp_path / "t.db") as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ENGINE_", "WEAVE_"))}
        env["PYTHONPATH"] = str(REPO)
        result = subprocess.run([reference_python(), "-m", "engine", "doctor", url,
                                 "--limit-mib", "1"], env=env, capture_output=True, text=True,
                                timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr  # delivery still works
    line = next(x for x in result.stdout.splitlines() if "weave integration" in x)
    assert line.strip().startswith("warn") and "weave 0.52.42 lacks" in line
    assert "ENGINE_WEAVE=1 leaves it sending its traces itself" in line


def test_a_proxy_the_engine_cannot_use_leaves_weave_as_it_is(tmp_path):
    """A socks proxy in ALL_PROXY (weave's httpx may take it; the engine talks to http://
    proxies only) toward weave's server: install() stands aside with one warning, so
    weave.init never raises over the environment weave itself runs with. No network: the
    program stops before weave.init."""
    env = {**os.environ, "ALL_PROXY": "socks5://127.0.0.1:9",
           "WF_TRACE_SERVER_URL": "https://trace.example.invalid", "PYTHONPATH": str(REPO)}
    for name in ("ENGINE_WEAVE", "HTTPS_PROXY", "https_proxy", "all_proxy", "NO_PROXY",
                 "no_proxy"):
        env.pop(name, None)
    program = ("import weave, engine.integrations.weave as w\n"
               "print('installed', w.install())\n"
               "print('again', w.install())\n")
    done = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["installed False", "again False"]
    said = [line for line in done.stderr.splitlines() if "cannot connect the way" in line]
    assert len(said) == 1, done.stderr
    assert "ALL_PROXY: socks5://127.0.0.1:9 is not an http:// proxy URL" in said[0]
    assert "weave sends its traces itself" in said[0]
