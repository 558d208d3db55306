"""--quick never writes over the committed results; the plots are readable at a glance
(sized, one colour per contender) from the committed full-run results."""

import json
import shutil
import struct
from pathlib import Path

import pytest

from bench import __main__ as bench_main
from bench import _report

RESULTS = Path(bench_main.__file__).resolve().parent / "results"


def test_quick_defaults_to_the_scratch_folder_and_refuses_the_committed_results():
    assert bench_main.parse_args(["--quick"]).out == bench_main.QUICK_OUT
    assert bench_main.parse_args([]).out == bench_main.DEFAULT_OUT
    with pytest.raises(SystemExit):
        bench_main.parse_args(["--quick", "--out", str(RESULTS)])


def _png_size(path: Path) -> tuple[int, int]:
    return struct.unpack(">II", path.read_bytes()[16:24])


def test_plots_from_the_committed_results_are_large_and_labelled(tmp_path):
    for name in ("e2e.jsonl", "producer.jsonl"):
        shutil.copy(RESULTS / name, tmp_path / name)
    _, results, _ = bench_main._read_results(tmp_path)
    written = _report.plot_all(results, tmp_path)
    assert {p.name for p in written} == {"e2e_throughput.png", "e2e_latency_cdf.png",
                                        "producer_cpu.png"}
    for path in written:
        width, height = _png_size(path)
        assert width >= 1000 and height >= 400, (path.name, width, height)
    contenders = {r["contender"] for r in results["e2e"]}
    assert len({_report._colour({"contender": c}) for c in contenders}) == len(contenders)


def test_a_section_measured_in_a_run_of_its_own_says_which(tmp_path):
    for name in ("e2e.jsonl", "pipes.jsonl"):
        shutil.copy(RESULTS / name, tmp_path / name)
    rows = (tmp_path / "pipes.jsonl").read_text().splitlines()
    other = {**json.loads(rows[0]), "git_commit": "abc1234", "cpu_model": "Other CPU"}
    (tmp_path / "pipes.jsonl").write_text("\n".join([json.dumps(other), *rows[1:]]) + "\n")
    machine, results, machines = bench_main._read_results(tmp_path)
    args = bench_main.parse_args(["--report-only", "--out", str(tmp_path)])
    summary = _report.summary_markdown(machine, results, args, machines)
    e2e, pipes = summary.split("## engine ingest")[0], summary.split("## engine ingest")[1]
    assert "run of its own" not in e2e  # the header's run
    assert "Measured in a run of its own" in pipes and "Other CPU" in pipes and "abc1234" in pipes


def test_a_run_of_some_scenarios_keeps_the_others_in_the_report(tmp_path, monkeypatch):
    shutil.copy(RESULTS / "e2e.jsonl", tmp_path / "e2e.jsonl")
    fresh = [json.loads(line) for line in (RESULTS / "pipes.jsonl").read_text().splitlines()]
    monkeypatch.setattr(bench_main, "run_scenario",
                        lambda name, cfg, repeat: [r for r in fresh if r.get("record") != "machine"])
    assert bench_main.main(["--scenarios", "pipes", "--out", str(tmp_path)]) == 0
    summary = (tmp_path / "summary.md").read_text()
    assert "## engine ingest" in summary  # the scenario run
    e2e_rows = [r for r in map(json.loads, (RESULTS / "e2e.jsonl").read_text().splitlines())
                if r.get("record") == "median"]
    assert e2e_rows and f"{round(e2e_rows[0]['calls_per_s']):,}" in summary  # and the other
