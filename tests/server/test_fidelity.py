"""Differential test: ``engine serve`` against weave's own ``SqliteTraceServer``.

The whole scenario (``tests/server/fidelity/scenarios.py``) runs on real ``engine serve``
processes, one per store, called through weave 0.54.0's client, and on the reference
(weave 0.52.42 in the reference venv), step by step on all of them at once. Every step
whose normalised answers differ from the reference's must be one of ``KNOWN`` — each
explained in docs/server-fidelity.md — and every ``KNOWN`` step must still differ, so the
list stays exact. Another store runs the same suite by adding its ``--store`` value to
``STORES`` (issue 21: ClickHouse).

And ``engine serve --store clickhouse://…`` must answer every step exactly as ``engine
serve`` on SQLite does, ``KNOWN`` steps too: there the SQLite store stands where the
reference stands, so every difference is a store difference.

Reproduce the report: ``python -m tests.server.fidelity`` (``--store`` / ``--url``).
"""

import contextlib
import uuid

import pytest

from engine.server import serve_subprocess
from tests.server.clickhouse_fixtures import PASSWORD
from tests.server.fidelity.backends import HttpServer, ReferenceServer
from tests.server.fidelity.compare import answers as run_steps
from tests.server.fidelity.compare import differences, paired, report, score
from tests.server.fidelity.scenarios import all_steps

pytestmark = [pytest.mark.integration, pytest.mark.peers]

# "clickhouse": the session's local ClickHouse server, a database of the module's own
STORES = ["sqlite", "clickhouse"]
# the share of scored steps that must answer identically
MIN_IDENTICAL = 0.92
# step label -> why ours differs (docs/server-fidelity.md has the long form)
KNOWN = {
    "ingest.start_no_ids": "ours assigns missing ids (the hosted server does); the reference 400s",
    "calls.query.turn_ids": "the reference ignores filter.turn_ids",
    "calls.query.storage_size": "sizes of stored text: the reference stores refs rewritten, spaced JSON",
    "calls.query.total_storage_size": "sizes of stored text (as above)",
    "calls.query.expr.trace_name": "the reference's SQL for trace_name needs REVERSE(), which SQLite lacks",
    "calls.query.expr.ended_after_iso": "the reference compares times as text ('+00:00' < 'Z')",
    "calls.read_costs": "no built-in default price table; only project prices",
    "objs.query.storage_size": "the reference does not compute size_bytes",
    "objs.create_id_slash": "400 for an object id weave refuses by its characters; weave 403s",
    "tables.stats_batch_size": "the reference does not compute storage_size_bytes",
    "tables.query.sort_asc_gaps": "rows without the field sort last both ways, as weave's ClickHouse server",
    "refs.object_latest": "ours resolves ':latest' in refs; the reference 404s",
    "refs.object_v0": "ours resolves ':v<N>' in refs; the reference 404s",
    "refs.table_row": "ours resolves table rows (id/<row digest>) in refs; the reference 404s",
    "refs.table_row_key": "as above, then a key of the row",
    "feedback.query.after_same_id": "a create with a stored id replaces it; the reference keeps both rows",
    "feedback.bad_ref": "ours refuses feedback on another project's object (422)",
    "costs.calls_with_costs": "the reference answers its internal project id as pricing_level_id",
    "costs.read_with_costs": "as above",
    "threads.after": "the reference takes first_turn_id from outside the time window",
    "evals.predict_read_finished": "the reference's prediction_finish ends the call again with a null output",
    "evals.predict_list_after": "as above (both predictions were finished)",
}


@pytest.fixture(scope="module")
def answers(tmp_path_factory, clickhouse_server):
    """Every store's answers and the reference's, to every step: ``(steps, {name: answers})``
    (the scenario runs once for the module's tests)."""
    folder = tmp_path_factory.mktemp("fidelity")
    steps = all_steps()
    with contextlib.ExitStack() as stack, pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("ENGINE_CLICKHOUSE_PASSWORD", PASSWORD)
        servers = {"reference": ReferenceServer(folder / "reference.db")}
        stack.callback(servers["reference"].close)
        for store in STORES:
            where = clickhouse_server.store_url(f"t_{uuid.uuid4().hex[:12]}") if store == "clickhouse" else store
            url = stack.enter_context(serve_subprocess(folder / f"engine-{store}.db", store=where))
            servers[store] = HttpServer(url)
            stack.callback(servers[store].close)
        rows = run_steps(steps, list(servers.values()))
    return steps, {name: [row[i] for row in rows] for i, name in enumerate(servers)}


@pytest.mark.parametrize("store", STORES)
def test_engine_serve_answers_as_weaves_own_server(answers, store):
    steps, by_server = answers
    outcomes = paired(steps, by_server[store], by_server["reference"])
    different = {o.step.label for o in outcomes if o.scored and not o.identical}
    unexplained = sorted(different - set(KNOWN))
    fixed = sorted(set(KNOWN) - different)
    assert not unexplained, f"new differences:\n{report(outcomes)}"
    assert not fixed, f"these now answer as the reference: remove them from KNOWN: {fixed}"
    identical, total = score(outcomes)["all"]
    assert identical / total >= MIN_IDENTICAL, report(outcomes)


def test_clickhouse_store_answers_the_scenario_as_the_sqlite_store(answers):
    """Reproduce: ``python -m tests.server.fidelity --url <engine serve on ClickHouse>``
    (against the reference) and compare with the SQLite store's report."""
    steps, by_server = answers
    outcomes = paired(steps, by_server["clickhouse"], by_server["sqlite"])
    assert len(outcomes) > 200
    different = [
        f"{o.step.label}: " + "; ".join(differences(o.ours, o.reference))
        for o in outcomes if not o.identical
    ]  # fmt: skip
    assert not different, "clickhouse (ours) vs sqlite (reference):\n" + "\n".join(different)
