"""weave's own write-ahead log (``WEAVE_ENABLE_WAL``): weave writes each call request to its
WAL files and its sender thread replays them through the trace server object -- the one
the integration replaced -- so through the engine the calls still go into the ring, after
weave's disk, and every one is stored. (``client.flush()`` there writes weave's WAL to disk,
as without the integration; its sender replays it every second and at exit.)"""

import json
import subprocess
import textwrap

import pytest

from engine.server import serve_subprocess
from tests.integrations._weaves import VERSIONS, weave_python
from tests.integrations.test_weave_integration import _stored_calls, _weave_env

pytestmark = [pytest.mark.peers, pytest.mark.integration]

CALLS = 100
_PROGRAM = textwrap.dedent(
    """
    import json, sys, time, weave
    import engine.integrations.weave
    client = weave.init(sys.argv[1])

    @weave.op
    def predict(x: int) -> int:
        return x + 1

    for i in range(int(sys.argv[2])):
        predict(i)
    client.flush()  # weave's own flush writes its WAL to disk; its sender replays it
    engine = engine.integrations.weave.installed_engine()
    deadline = time.monotonic() + 30  # the sender looks every second
    while engine.stats()["items_sent"] < int(sys.argv[2]) and time.monotonic() < deadline:
        time.sleep(0.05)
    print(json.dumps({"wal": client._wal is not None, "items_sent": engine.stats()["items_sent"]}))
    """
)


@VERSIONS
def test_weave_s_write_ahead_log_goes_through_the_engine(tmp_path, weave_minor):
    program = tmp_path / "wal.py"
    program.write_text(_PROGRAM)
    with serve_subprocess(tmp_path / "t.db") as url:
        env = _weave_env(url, str(tmp_path), enable_env=True)
        env["WEAVE_ENABLE_WAL"] = "true"
        result = subprocess.run([weave_python(weave_minor), str(program), "ent/wal", str(CALLS)],
                                env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        calls = _stored_calls(url, "ent/wal", "predict")
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["wal"] is True  # weave wrote its WAL
    assert out["items_sent"] >= CALLS  # the calls went through the engine's sender
    assert sorted(c["inputs"]["x"] for c in calls if c["ended_at"]) == list(range(CALLS))
