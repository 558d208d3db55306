"""weave 0.54.0's own client publishes an object and a dataset and adds feedback to a call
against ``engine serve``, then reads all of them back through the same client."""

import subprocess
import sys
import textwrap

import pytest

from engine.server import serve_subprocess
from tests.server.test_weave_peer_compat import _weave_env

pytestmark = [pytest.mark.peers, pytest.mark.integration]

try:
    import weave  # noqa: F401
except Exception:  # the peers extra is optional; any import failure means "not installed"
    pytestmark.append(pytest.mark.skip(reason="weave (the peers extra) is not importable"))

_CLIENT = textwrap.dedent(
    """
    import sys
    import weave

    client = weave.init(sys.argv[1])
    ref = weave.publish({"prompt": "be brief", "temperature": 0.5}, name="settings")
    assert weave.ref(ref.uri()).get() == {"prompt": "be brief", "temperature": 0.5}, "object"
    rows = [{"q": f"question {i}", "a": i} for i in range(30)]
    ds_ref = weave.publish(weave.Dataset(name="qa", rows=rows))
    got = weave.ref(ds_ref.uri()).get()
    assert [dict(r) for r in got.rows] == rows, "dataset rows"

    @weave.op
    def predict(q: str) -> str:
        return q.upper()

    _, call = predict.call("hi")
    call.feedback.add_reaction("👍")
    call.feedback.add_note("good")
    client.flush()
    kinds = sorted(f.feedback_type for f in client.get_feedback())
    assert kinds == ["wandb.note.1", "wandb.reaction.1"], kinds
    print("read back")
    """
)


def test_weave_client_reads_back_objects_datasets_and_feedback(tmp_path):
    with serve_subprocess(tmp_path / "traces.db") as url:
        result = subprocess.run(
            [sys.executable, "-c", _CLIENT, "ent/peer"],
            env=_weave_env(url, str(tmp_path), use_calls_complete=True),
            capture_output=True, text=True, timeout=100,
        )  # fmt: skip
    assert result.returncode == 0 and "read back" in result.stdout, result.stderr[-3000:]
