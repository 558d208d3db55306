"""The summary (markdown, ratios against the best peer) and the PNG plots of a bench run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench._cells import flags, num, spread
from bench.scenarios import distant, matrix, pipes, senders

PEERS = ("weave-batched", "weave-op", "naive")
_RING_PEERS = ("mp.Queue", "faster-fifo")
_E2E_TARGET_PRODUCERS = 2


# ---- formatting ----------------------------------------------------------------------------


def _ratio(value: float | None, best_peer: float | None, higher_is_better: bool = True) -> str:
    if not value or not best_peer:
        return "–"
    factor = value / best_peer if higher_is_better else best_peer / value
    return f"{factor:,.1f}x"


def _label(row: dict[str, Any]) -> str:
    label = row["contender"]
    if row["contender"] == "engine" and row.get("mode"):
        label += f" ({row['mode']})"
    if row.get("compression") == "zstd":
        label += " +zstd"
    return label


# ---- sections ----------------------------------------------------------------------------------


def _find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def _targets(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    def line(target: str, measured: float | None, unit: str, ok: bool | None) -> str:
        verdict = "–" if ok is None else ("met" if ok else "**not met**")
        return f"| {target} | {num(measured, 1)} {unit} | {verdict} |"

    lines = ["| target (this 2-core box) | measured (median) | |", "|---|---:|---|"]
    ring_rows = [r for r in results.get("ring", []) if r["contender"] == "ring"]
    if ring_rows:
        small = max((r["items_per_s"] for r in ring_rows if r["record_bytes"] == 64), default=None)
        big = max((r["mb_per_s"] for r in ring_rows if r["record_bytes"] == 4096), default=None)
        lines.append(line("ring: >= 1M small (64 B) records/s", small, "records/s",
                          None if small is None else small >= 1e6))
        lines.append(line("ring: >= 1.5 GB/s of 4 KiB records", big, "MB/s",
                          None if big is None else big >= 1500))
    prod = _find(results.get("producer", []), contender="engine", mode="startend")
    if prod:
        cpu = prod.get("cpu_us_per_call")
        lines.append(line("producer: <= 5 µs CPU per complete call (4 KB eval)", cpu, "µs",
                          None if cpu is None else cpu <= 5))
    hot = _find(results.get("producer", []), contender="engine", mode="startend, in cache")
    if hot:
        cpu = hot.get("cpu_us_per_call")
        lines.append(line("producer, the same with the call's data in cache (64 payloads)", cpu,
                          "µs", None if cpu is None else cpu <= 5))
    rows = results.get("e2e", [])
    e2e = _find(rows, contender="engine", profile="eval", producers=_E2E_TARGET_PRODUCERS,
                compression="none", sink="count")
    if e2e:
        rate = e2e.get("calls_per_s")
        lines.append(line("e2e: >= 100k calls/s, 2 producers, count sink, uncompressed",
                          rate, "calls/s", None if rate is None else rate >= 1e5))
    zstd = _find(rows, contender="engine", profile="eval", producers=_E2E_TARGET_PRODUCERS,
                 compression="zstd", sink="count")
    if zstd:
        factor = zstd.get("wire_reduction_x")
        lines.append(line("zstd: >= 3.5x fewer bytes on the wire (eval)", factor, "x",
                          None if factor is None else factor >= 3.5))
    limit = _find(results.get("faults", []), contender="engine", case="limit_413")
    if limit:
        pct = limit.get("rejected_pct_after_adapting")
        lines.append(line("1 MiB limit: rejected upload bytes <= 5% of accepted, once adapted "
                          f"(whole run incl. learning: {num(limit.get('rejected_pct_of_accepted'), 1)}%)",
                          pct, "%", None if pct is None else pct <= 5))
    return lines


def _ring_section(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| record | producers | contender | records/s (median, min–max) | MB/s | ring vs best peer |",
             "|---:|---:|---|---:|---:|---:|"]
    for size in sorted({r["record_bytes"] for r in rows}):
        for producers in sorted({r["producers"] for r in rows}):
            group = [r for r in rows if (r["record_bytes"], r["producers"]) == (size, producers)]
            best_peer = max((r["items_per_s"] for r in group if r["contender"] in _RING_PEERS),
                            default=None)
            for r in sorted(group, key=lambda r: -r["items_per_s"]):
                ratio = _ratio(r["items_per_s"], best_peer) if r["contender"] == "ring" else ""
                lines.append(
                    f"| {size} B | {producers} | {r['contender']} | {num(r['items_per_s'])} "
                    f"({num(r['items_per_s_min'])}–{num(r['items_per_s_max'])}) | "
                    f"{num(r['mb_per_s'])} | {ratio} |")
    return lines


def _producer_section(rows: list[dict[str, Any]]) -> list[str]:
    best_peer = min((r["cpu_us_per_call"] for r in rows
                     if r["contender"] in PEERS and r.get("cpu_us_per_call")), default=None)
    lines = ["| contender | CPU µs per call in the traced process (all its threads) | "
             "main thread, enqueue loop | client side in all (engine: + sender process) | "
             "enqueue calls/s | vs best peer | notes |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in sorted(rows, key=lambda r: r.get("cpu_us_per_call") or 1e18):
        ratio = _ratio(r.get("cpu_us_per_call"), best_peer, higher_is_better=False)
        lines.append(f"| {_label(r)} | {spread(r, 'cpu_us_per_call', 1)} | "
                     f"{num(r.get('main_thread_cpu_us_per_call'), 1)} | "
                     f"{num(r.get('process_cpu_us_per_call'), 1)} | "
                     f"{num(r.get('enqueue_calls_per_s'))} | "
                     f"{ratio if r['contender'] == 'engine' else ''} | {flags(r)} |")
    return lines


def _rss_text(rss: dict[str, Any] | None) -> str:
    if not rss:
        return "–"
    producers = [p for p in rss.get("producers") or [] if p]
    parts = [f"prod {max(producers) // 1024} MB" if producers else None]
    for name in ("sender", "sink"):
        if rss.get(name):
            parts.append(f"{name} {rss[name] // 1024} MB")
    return ", ".join(p for p in parts if p)


def _e2e_section(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| sink | profile | producers | contender | calls/s (median, min–max) | MB/s raw | "
             "MB/s wire | wire x | p50 / p99 ms | lost | dup | peak RSS | vs best peer | notes |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    cells = sorted({(r["sink"], r["profile"], r["producers"]) for r in rows})
    for sink, profile, producers in cells:
        group = [r for r in rows if (r["sink"], r["profile"], r["producers"]) ==
                 (sink, profile, producers)]
        best_peer = max((r.get("calls_per_s") or 0 for r in group if r["contender"] in PEERS),
                        default=None)
        for r in sorted(group, key=lambda r: -(r.get("calls_per_s") or 0)):
            latency = "–"
            if r.get("latency_p50_ms") is not None:
                latency = f"{num(r['latency_p50_ms'])} / {num(r['latency_p99_ms'])}"
            elif r.get("latency_mean_ms") is not None:
                latency = f"mean {num(r['latency_mean_ms'], 2)}"
            ratio = _ratio(r.get("calls_per_s"), best_peer) if r["contender"] == "engine" else ""
            lines.append(
                f"| {sink} | {profile} | {producers} | {_label(r)} | {spread(r, 'calls_per_s')} | "
                f"{num(r.get('mb_per_s_raw'), 1)} | {num(r.get('mb_per_s_wire'), 1)} | "
                f"{num(r.get('wire_reduction_x'), 1)} | {latency} | {num(r.get('calls_lost'))} | "
                f"{num(r.get('calls_duplicated'))} | {_rss_text(r.get('peak_rss_kib'))} | "
                f"{ratio} | {flags(r)} |")
    return lines


def _faults_section(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| case | contender | enqueued | delivered | lost | dup | requests (by status) | "
             "rejected / accepted upload MB | rejected % (after adapting) | flush s | "
             "drain after outage s | notes |",
             "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|"]
    for r in sorted(rows, key=lambda r: (r["case"], r["contender"])):
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted((r.get("requests_by_status") or {}).items()))
        lines.append(
            f"| {r['case']} | {r['contender']} | {num(r.get('calls_enqueued'))} | "
            f"{num(r.get('calls_delivered'))} | {num(r.get('calls_lost'))} | "
            f"{num(r.get('calls_duplicated'))} | {num(r.get('requests'))} ({statuses}) | "
            f"{num(r.get('rejected_upload_bytes', 0) / 1e6, 1)} / "
            f"{num(r.get('accepted_upload_bytes', 0) / 1e6, 1)} | "
            f"{num(r.get('rejected_pct_of_accepted'), 1)} "
            f"({num(r.get('rejected_pct_after_adapting'), 1)}) | {num(r.get('flush_s'), 1)} | "
            f"{num(r.get('drain_after_outage_s'), 1)} | {flags(r)} |")
    return lines


def _burst_section(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| contender | producers | offered | attempted in time | dropped by client | "
             "at sink | lost | enqueue calls/s | notes |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(
            f"| {r['contender']} | {r['producers']} | {num(r.get('calls_offered'))} | "
            f"{num(r.get('calls_attempted'))} | {num(r.get('dropped_by_client'))} | "
            f"{num(r.get('calls_at_sink'))} | {num(r.get('calls_lost'))} | "
            f"{num(r.get('enqueue_calls_per_s'))} | {flags(r)} |")
    return lines


_SECTIONS = (
    ("ring", "Ring: records through shared memory vs queues", _ring_section),
    ("producer", "Producer: CPU per traced call (eval profile, ~4 KB)", _producer_section),
    ("e2e", "End to end: delivered to the sink", _e2e_section),
    ("matrix", "Paths users take: payload x compression x sink, CPU per call of every process "
     "(eval, 2 producers)", matrix.section),
    ("pipes", "engine ingest of a JSON-lines file, and engine relay fed by the engine's client "
     "(eval)", pipes.section),
    ("senders", "Sender processes: calls/s against senders (eval, 2 producers, count sink)",
     senders.section),
    ("distant", f"A distant server: every answer {distant.LATENCY_MS:g} ms late (decoding sink, "
     "dicts with ISO timestamps, eval, zstd)", distant.section),
    ("faults", "Faults (FaultServer, eval profile, no compression)", _faults_section),
    ("burst", "Burst: offered as fast as possible (small profile)", _burst_section),
)


def summary_markdown(machine: dict[str, Any], results: dict[str, list[dict[str, Any]]],
                     args: argparse.Namespace,
                     machines: dict[str, dict[str, Any]] | None = None) -> str:
    """The report; ``machines`` (scenario -> its file's machine line, --report-only) names
    the run of any section measured apart from the one in the header."""
    load = machine.get("load_avg_1_5_15", [0, 0, 0])
    load_end = machine.get("load_avg_at_end_1_5_15")
    at_end = (f", at end {load_end[0]:.2f}/{load_end[1]:.2f}/{load_end[2]:.2f}" if load_end
              else " (rebuilt with --report-only; each .jsonl has its run's machine line)")
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    lines = [
        "# Bench results", "",
        f"{machine['date_utc']} · {machine['cpu_model']} · {machine['cpus']} CPUs · "
        f"Python {machine['python']} · {versions} · commit {machine.get('git_commit')}", "",
        f"Load average (1/5/15 min) at start {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}{at_end}: "
        "other work may have shared the two cores, so absolute figures can be depressed; "
        "compare contenders within a run.", "",
        f"`python -m bench {'--quick ' if args.quick else ''}--repeat {args.repeat}` · "
        f"medians of {args.repeat} run(s), min–max in brackets where there were several. "
        "\"vs best peer\": the engine's factor over the best of weave 0.54.0 (batched client, "
        "`@weave.op`) and the naive client; higher is better.", "",
        "## Targets", "", *_targets(results), "",
    ]
    for name, title, section in _SECTIONS:
        if results.get(name):
            lines += [f"## {title}", "", *_separate_run(machine, (machines or {}).get(name)),
                      *section(results[name]), ""]
    return "\n".join(lines)


def _separate_run(head: dict[str, Any], own: dict[str, Any] | None) -> list[str]:
    """A line naming a section's own run when it is not the header's."""
    keys = ("date_utc", "cpu_model", "git_commit")
    if not own or all(own.get(k) == head.get(k) for k in keys):
        return []
    load = own.get("load_avg_1_5_15", [0, 0, 0])
    return [f"*Measured in a run of its own: {own.get('date_utc')} · {own.get('cpu_model')} · "
            f"{own.get('cpus')} CPUs · commit {own.get('git_commit')} · load at start "
            f"{load[0]:.2f}.*", ""]


# ---- plots ---------------------------------------------------------------------------------------
# Sized to be read at a glance on a laptop screen (about 1300 px wide), one fixed colour per
# contender in every figure, every axis labelled with its unit.

_PLOT_DPI = 110
_COLOURS = {"engine": "#1f5fbf", "weave-batched": "#e07b00", "weave-op": "#2a9d3a",
            "naive": "#7f7f7f", "weave-op+engine": "#6a3d9a", "ring": "#1f5fbf", "mp.Queue": "#b03a2e", "faster-fifo": "#8e44ad"}
_PROFILE_ORDER = ["small", "eval", "large"]


def _colour(row: dict[str, Any]) -> str:
    return _COLOURS.get(row["contender"], "#333333")


def _style(row: dict[str, Any]) -> str:
    return "--" if row.get("compression") == "zstd" else "-"


def plot_all(results: dict[str, list[dict[str, Any]]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    written = []
    if results.get("e2e"):
        written.append(_plot_throughput(results["e2e"], out / "e2e_throughput.png"))
        if any(r.get("latency_p50_ms") is not None for r in results["e2e"]):
            written.append(_plot_latency(results["e2e"], out / "e2e_latency_cdf.png"))
    if results.get("producer"):
        written.append(_plot_producer(results["producer"], out / "producer_cpu.png"))
    return written


def _plot_throughput(rows: list[dict[str, Any]], path: Path) -> Path:
    """Calls/s delivered against producer processes, one panel per payload profile."""
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["sink"] == "count" and r.get("calls_per_s")]
    profiles = sorted({r["profile"] for r in rows}, key=_PROFILE_ORDER.index)
    fig, axes = plt.subplots(1, len(profiles), figsize=(4.2 * len(profiles), 4.4), squeeze=False,
                             sharey=True)
    for ax, profile in zip(axes[0], profiles):
        group = [r for r in rows if r["profile"] == profile]
        for label in sorted({_label(r) for r in group}):
            mine = sorted((r for r in group if _label(r) == label), key=lambda r: r["producers"])
            xs, ys = [r["producers"] for r in mine], [r["calls_per_s"] for r in mine]
            ax.plot(xs, ys, _style(mine[0]), color=_colour(mine[0]), marker="o", linewidth=2,
                    label=label)
            if mine[0].get("compression") != "zstd":  # labelled once per contender
                ax.annotate(_short(ys[-1]), (xs[-1], ys[-1]), textcoords="offset points",
                            xytext=(6, 0), fontsize=8, va="center", color=_colour(mine[0]))
        ax.set_yscale("log")
        ax.set_title(f"{profile} calls", fontsize=11)
        ax.set_xlabel("producer processes")
        ax.set_xticks(sorted({r["producers"] for r in group}))
        ax.margins(x=0.15)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("calls/s delivered to the sink (log scale)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.suptitle("End to end: calls delivered per second vs producer processes "
                 "(median of the runs; dashed = zstd)", fontsize=12)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    fig.savefig(path, dpi=_PLOT_DPI)
    plt.close(fig)
    return path


def _short(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.1f}M"
    return f"{value / 1e3:.0f}k" if value >= 1e3 else f"{value:.0f}"


# y positions: -log10(1 - q), so p50, p90, p99 are evenly spaced; the maximum is drawn a step
# above p99
_PERCENTILES = (("latency_p50_ms", "p50", 0.3), ("latency_p90_ms", "p90", 1.0),
                ("latency_p99_ms", "p99", 2.0), ("latency_max_ms", "max", 3.0))


def _plot_latency(rows: list[dict[str, Any]], path: Path) -> Path:
    """The engine's enqueue-to-acknowledgement latency: the sender's measured percentiles
    (p50, p90, p99, max) as points of the CDF, joined; nothing below p50 is drawn because
    nothing below it was measured. One panel per profile, one line per producer count."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    rows = [r for r in rows if r["contender"] == "engine" and r["sink"] == "count"
            and r.get("latency_p50_ms") is not None]
    profiles = sorted({r["profile"] for r in rows}, key=_PROFILE_ORDER.index)
    fig, axes = plt.subplots(1, len(profiles), figsize=(4.2 * len(profiles), 4.4), squeeze=False,
                             sharey=True)
    shades = {1: "#9ec5ff", 2: "#1f5fbf", 4: "#0a2a66"}
    for ax, profile in zip(axes[0], profiles):
        for r in sorted((r for r in rows if r["profile"] == profile),
                        key=lambda r: (r["producers"], r.get("compression") or "")):
            xs = [r[name] for name, _, _ in _PERCENTILES]
            ax.plot(xs, [y for _, _, y in _PERCENTILES], _style(r), marker="o", linewidth=2,
                    color=shades.get(r["producers"], "#1f5fbf"),
                    label=f"{r['producers']} producer{'s' if r['producers'] > 1 else ''}"
                    f"{' +zstd' if r.get('compression') == 'zstd' else ''}")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_yticks([y for _, _, y in _PERCENTILES], [n for _, n, _ in _PERCENTILES])
        ax.set_title(f"{profile} calls", fontsize=11)
        ax.set_xlabel("enqueue → server acknowledged, ms (log scale)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("percentile of calls (acknowledged within x ms)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.suptitle("engine: latency from enqueue to acknowledgement (sender's percentiles, "
                 "count sink; dashed = zstd)", fontsize=12)
    fig.tight_layout(rect=(0, 0.07, 1, 0.94))
    fig.savefig(path, dpi=_PLOT_DPI)
    plt.close(fig)
    return path


def _plot_producer(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib.pyplot as plt

    rows = sorted((r for r in rows if r.get("cpu_us_per_call")), key=lambda r: r["cpu_us_per_call"])
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.4))
    bars = ax.barh([_label(r) for r in rows], [r["cpu_us_per_call"] for r in rows],
                   color=[_colour(r) for r in rows])
    for bar, r in zip(bars, rows):
        ax.annotate(f"{r['cpu_us_per_call']:,.1f} µs", (bar.get_width(), bar.get_y() + 0.4),
                    textcoords="offset points", xytext=(4, 0), va="center", fontsize=9)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("CPU µs per traced call, paid by the traced process (log scale; lower is better)")
    ax.set_title("Producer: CPU per ~4 KB eval call (median of the runs)", fontsize=12)
    ax.grid(True, axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=_PLOT_DPI)
    plt.close(fig)
    return path
