"""The differential scenario on both stores: ``engine serve --store clickhouse://…`` must
answer every step exactly as ``engine serve`` on SQLite does.

The whole scenario of ``tests/server/fidelity`` (every route family, weave 0.54.0's client,
answers normalised: made-up ids and digests by first appearance, server-clock times) runs
on two real ``engine serve`` processes, one per store; the SQLite one stands where the
differential test puts weave's reference, so every difference is a store difference. How
SQLite's answers compare with weave's own server is ``tests/server/fidelity``'s business;
with this test both stores share that score.

Reproduce: ``python -m tests.server.fidelity --url <engine serve on ClickHouse>``.
"""

import pytest

from engine.server import serve_subprocess
from tests.server.clickhouse_fixtures import clickhouse_server, clickhouse_url  # noqa: F401
from tests.server.fidelity.backends import HttpServer
from tests.server.fidelity.compare import differences, run
from tests.server.fidelity.scenarios import all_steps

pytestmark = [pytest.mark.integration, pytest.mark.peers]


def test_clickhouse_store_answers_the_scenario_as_the_sqlite_store(tmp_path, clickhouse_url):  # noqa: F811
    with (
        serve_subprocess(tmp_path / "engine.db", store="sqlite") as sqlite_url,
        serve_subprocess(None, store=clickhouse_url) as ch_url,
    ):
        ours, reference = HttpServer(ch_url), HttpServer(sqlite_url)
        try:
            outcomes = run(all_steps(), ours, reference)
        finally:
            ours.close()
            reference.close()
    assert len(outcomes) > 200
    different = [
        f"{o.step.label}: " + "; ".join(differences(o.ours, o.reference))
        for o in outcomes if not o.identical
    ]  # fmt: skip
    assert not different, "clickhouse (ours) vs sqlite (reference):\n" + "\n".join(different)
