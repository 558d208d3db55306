"""What one big upload costs everyone else: ``engine serve`` RSS, and the latency of another
client, while one client uploads a 50 MB table in one ``/table/create``.

    python -m bench.server_upload                       # 50 MB, 3 runs
    python -m bench.server_upload --mb 20 --repeat 1

Each run starts a fresh ``engine serve`` child (SQLite in a temporary folder, body limit
raised to fit the table), measures a second client's ``/calls/query_stats`` round trips
(one every 20 ms on a keep-alive connection) while idle and then during the upload, and
samples the server's RSS every 10 ms. Reports the upload time, the server's RSS before and
at its peak, and the other client's latency p50 / p99 / max idle vs during the upload.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import msgspec

from bench.harness import machine_info
from bench.payloads import profile
from engine.server import spawn_server, stop_server

PROJECT = "bench-entity/upload"
_PROBE_EVERY_S = 0.02


def table_body(megabytes: float) -> bytes:
    """A ``/table/create`` body of about ``megabytes`` MB: eval-profile inputs as rows."""
    rows, size, i = [], 0, 0
    evals = profile("eval")
    while size < megabytes * 1e6:
        row = {"index": i, **evals.inputs(i % 5000)}
        rows.append(row)
        size += len(msgspec.json.encode(row)) + 1
        i += 1
    return msgspec.json.encode({"table": {"project_id": PROJECT, "rows": rows}})


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class _Probe(threading.Thread):
    """Another client: small requests on one keep-alive connection, latencies recorded."""

    def __init__(self, netloc: str) -> None:
        super().__init__(daemon=True)
        self._conn = http.client.HTTPConnection(netloc, timeout=120)
        self._body = json.dumps({"project_id": PROJECT}).encode()
        self.latencies_s: list[tuple[float, float]] = []  # (sent at, seconds)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            sent = time.perf_counter()
            self._conn.request("POST", "/calls/query_stats", body=self._body,
                               headers={"Content-Type": "application/json"})  # fmt: skip
            self._conn.getresponse().read()
            self.latencies_s.append((sent, time.perf_counter() - sent))
            time.sleep(_PROBE_EVERY_S)
        self._conn.close()


def _percentiles(values: list[float]) -> dict[str, float]:
    values = sorted(values) or [0.0]
    return {"p50_ms": 1000 * values[len(values) // 2],
            "p99_ms": 1000 * values[min(len(values) - 1, int(len(values) * 0.99))],
            "max_ms": 1000 * values[-1], "n": len(values)}  # fmt: skip


def run_once(body: bytes) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="engine-bench-upload-") as folder:
        proc, url = spawn_server(Path(folder) / "t.db", max_body_bytes=len(body) + (1 << 20))
        try:
            netloc = urllib.parse.urlsplit(url).netloc
            probe = _Probe(netloc)
            probe.start()
            time.sleep(1.0)  # idle latencies
            rss_before = _rss_kib(proc.pid)
            peak, sampling = [rss_before], threading.Event()

            def sample() -> None:
                while not sampling.is_set():
                    peak.append(_rss_kib(proc.pid))
                    time.sleep(0.01)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            began = time.perf_counter()
            upload = http.client.HTTPConnection(netloc, timeout=600)
            upload.request("POST", "/table/create", body=body,
                           headers={"Content-Type": "application/json"})  # fmt: skip
            answer = upload.getresponse()
            status, _ = answer.status, answer.read()
            ended = time.perf_counter()
            sampling.set()
            probe.stop.set()
            probe.join()
            sampler.join()
        finally:
            stop_server(proc)
    idle = [s for at, s in probe.latencies_s if at < began]
    during = [s for at, s in probe.latencies_s if began <= at <= ended]
    return {
        "status": status, "upload_s": ended - began, "rss_before_mib": rss_before / 1024,
        "rss_peak_mib": max(peak) / 1024, "rss_growth_mib": (max(peak) - rss_before) / 1024,
        "other_client_idle": _percentiles(idle), "other_client_during_upload": _percentiles(during),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.server_upload", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=50.0, help="table body size, MB")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default="bench/results/server_upload.jsonl")
    args = parser.parse_args(argv)
    body = table_body(args.mb)
    runs = [run_once(body) for _ in range(args.repeat)]
    med = lambda f: statistics.median(f(r) for r in runs)  # noqa: E731
    print(f"table body {len(body) / 1e6:.1f} MB, {args.repeat} runs (medians)")
    print("| upload s | server RSS before | peak | growth | other client idle p50/p99/max ms "
          "| during upload p50/p99/max ms | status |")
    print("|---:|---:|---:|---:|---:|---:|:---:|")
    idle = lambda k: med(lambda r: r["other_client_idle"][k])  # noqa: E731
    busy = lambda k: med(lambda r: r["other_client_during_upload"][k])  # noqa: E731
    print(f"| {med(lambda r: r['upload_s']):.2f} | {med(lambda r: r['rss_before_mib']):.0f} MiB "
          f"| {med(lambda r: r['rss_peak_mib']):.0f} MiB | {med(lambda r: r['rss_growth_mib']):.0f} MiB "
          f"| {idle('p50_ms'):.1f} / {idle('p99_ms'):.1f} / {idle('max_ms'):.1f} "
          f"| {busy('p50_ms'):.1f} / {busy('p99_ms'):.1f} / {busy('max_ms'):.1f} "
          f"| {','.join(str(r['status']) for r in runs)} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for record in (machine_info(), *runs):
            f.write(json.dumps(record) + "\n")
    return 0 if all(r["status"] == 200 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
