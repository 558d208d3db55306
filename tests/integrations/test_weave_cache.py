"""weave 0.54.0 caches its server's answers on disk, ``obj_create`` included, in one folder
for every server (``<tmp>/weave_trace_server_cache``) keyed by the request alone: an object
created once is never sent to the next server. Through the engine's weave integration each
store gets a folder of its own (``engine.integrations._weave_cache``)."""

import json
import os
import stat
import sys
import textwrap
import time
import urllib.request

import pytest

from engine.server import serve_subprocess
from tests.integrations.test_weave_integration import _run_program, _weave_env

pytestmark = [pytest.mark.peers, pytest.mark.integration]

try:
    import weave  # noqa: F401
except Exception:  # the peers extra is optional
    pytestmark.append(pytest.mark.skip(reason="weave (the peers extra) is not importable"))

PROJECT = "acme/cache"
_PROGRAM = textwrap.dedent(
    """
    import weave
    weave.init("acme/cache")
    weave.publish(weave.Dataset(name="questions", rows=[{"q": "one"}, {"q": "two"}]))

    @weave.op
    def answer(q: str) -> str:
        return q.upper()

    answer("one")
    """
)


_SHORT_GRACE = ("--missing-op-grace-s", "1")


def _objects(url: str) -> set[str]:
    body = json.dumps({"project_id": PROJECT}).encode()
    with urllib.request.urlopen(urllib.request.Request(url + "/objs/query", data=body),
                                timeout=30) as resp:
        return {obj["object_id"] for obj in json.loads(resp.read())["objs"]}


def _ops_missing(url: str, at_least: int, timeout_s: float = 40.0) -> int:
    """``ops_missing`` of the server's /stats once it reaches ``at_least`` (or the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with urllib.request.urlopen(url + "/stats", timeout=30) as resp:
            found = json.loads(resp.read())["ops_missing"]
        if found >= at_least or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def _run_on_two_fresh_servers(tmp_path, integration: bool, watch_second: bool = False,
                              **extra_env: str) -> list:
    """The same program against one fresh server, then another; the objects each holds
    (and, with ``watch_second``, how many ops the second found its calls naming but lacking)."""
    tmp = tmp_path / "tmp"  # weave's default cache folder and ours live in the temp dir
    tmp.mkdir(exist_ok=True)
    program = tmp_path / "program.py"
    program.write_text(_PROGRAM)
    stored = []
    for name in ("first", "second"):
        # a short grace: the server looks for the ops a call names 1 s after it, not 10
        with serve_subprocess(tmp_path / f"{name}.db", flags=_SHORT_GRACE) as url:
            env = _weave_env(url, str(tmp_path), enable_env=integration)
            env.update(TMPDIR=str(tmp), **extra_env)
            result = _run_program([sys.executable, str(program)], env)
            assert result.returncode == 0, result.stderr[-3000:]
            stored.append(_objects(url))
            if watch_second and name == "second":
                ended = time.monotonic()
                stored.append(_ops_missing(url, at_least=1))
                stored.append(time.monotonic() - ended)
    return stored


def test_weave_alone_never_sends_a_second_server_what_it_created_on_the_first(tmp_path):
    first, second, ops_missing, waited_s = _run_on_two_fresh_servers(
        tmp_path, integration=False, watch_second=True)
    assert {"questions", "answer"} <= first
    assert "questions" not in second and "answer" not in second  # answered from its cache
    assert ops_missing == 1  # the second server noticed (and said so: engine.server._op_watch)
    assert waited_s < 8  # after --missing-op-grace-s 1, not the default 10 s


def test_through_the_engine_each_store_gets_everything_weave_created(tmp_path):
    first, second = _run_on_two_fresh_servers(tmp_path, integration=True)
    assert {"questions", "answer"} <= first and {"questions", "answer"} <= second
    folders = list((tmp_path / "tmp" / f"weave_trace_server_cache-engine-{os.getuid()}").iterdir())
    assert len(folders) == 2  # one per store, private to the user
    assert all(stat.S_IMODE(os.stat(f).st_mode) == 0o700 for f in folders)


def test_a_cache_folder_the_user_chose_stands(tmp_path):
    chosen = tmp_path / "my-cache"
    first, second = _run_on_two_fresh_servers(tmp_path, integration=True,
                                              WEAVE_SERVER_CACHE_DIR=str(chosen))
    assert "questions" in first and "questions" not in second  # weave's behaviour, as asked
    assert any(chosen.iterdir())
    assert not (tmp_path / "tmp" / f"weave_trace_server_cache-engine-{os.getuid()}").exists()


def test_a_cache_folder_that_cannot_be_made_leaves_weave_s_own_and_never_fails_init(tmp_path, monkeypatch):
    from engine.integrations import _weave_cache

    monkeypatch.delenv(_weave_cache.CACHE_ENV, raising=False)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the folder would go")
    monkeypatch.setattr(_weave_cache, "cache_root", lambda: str(blocker))
    monkeypatch.setattr(_weave_cache, "store_id", lambda url, key: "some-store")
    assert _weave_cache.key_by_store("http://127.0.0.1:1", None) is None
    assert _weave_cache.CACHE_ENV not in os.environ
