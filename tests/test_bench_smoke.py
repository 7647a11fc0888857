"""The quick benchmark end to end: real servers, real workloads, a well-formed results file.

Runs ``python -m bench --quick`` once (about 15 s) and checks what it wrote. Speed is
never asserted, only that every number is there and positive. A peer whose server
binary or Python client is missing is skipped by the bench, and its test here is
skipped with the bench's reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = ("shoal", "shoal-raw", "redis", "nats")
RECORDS = 20_000


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """Run the quick bench with its temp dirs, results and plots under one tmp dir."""
    base = tmp_path_factory.mktemp("bench")
    tmp = base / "tmp"
    tmp.mkdir()
    out, img = base / "results", base / "img"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--no-install", "--out", str(out), "--img-dir", str(img)],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {"doc": json.loads((out / "latest.json").read_text()), "stdout": done.stdout, "tmp": tmp, "out": out,
            "img": img}  # fmt: skip


def _positive(section: dict, *fields: str) -> None:
    for field in fields:
        assert isinstance(section[field], (int, float)) and section[field] > 0, (field, section)


@pytest.mark.parametrize("name", SYSTEMS)
def test_every_workload_reports_positive_numbers(bench_run, name):
    """Produce, consume and latency ran and reported throughput (and latency percentiles)."""
    doc = bench_run["doc"]
    if name in doc["skipped"]:
        pytest.skip(f"bench skipped {name}: {doc['skipped'][name]}")
    system = doc["systems"][name]
    assert "errors" not in system, system.get("errors")
    assert system["produce"]["records"] == RECORDS
    assert system["consume"]["records"] == RECORDS
    _positive(system["produce"], "bytes", "seconds", "records_per_s", "mb_per_s", "client_cpu_percent")
    _positive(system["consume"], "bytes", "seconds", "records_per_s", "mb_per_s", "client_cpu_percent")
    assert system["produce"]["server_cpu_percent"] >= 0
    latency = system["latency"]["latency"]
    _positive(latency, "count", "p50_ms", "p99_ms", "p999_ms", "max_ms")
    assert latency["p50_ms"] <= latency["p99_ms"] <= latency["p999_ms"] <= latency["max_ms"]
    fractions = [q for q, _ in latency["cdf"]]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    _positive(system, "server_rss_mib")


def test_ratios_compare_shoal_with_each_peer_that_ran(bench_run):
    doc = bench_run["doc"]
    peers = [p for p in ("redis", "nats") if p not in doc["skipped"]]
    if not peers:
        pytest.skip(f"no peer ran: {doc['skipped']}")
    for peer in peers:
        for metric in ("produce", "consume", "latency_p99_ms"):
            assert doc["ratios"][metric][f"shoal/{peer}"] > 0


def test_resource_runs_report_memory_threads_cpu_and_restart(bench_run):
    resources = bench_run["doc"]["resources"]
    part, restart = resources["partitions"], resources["restart"]
    assert "error" not in part and "error" not in restart, resources
    assert part["partitions"] == 500
    _positive(part["at_start"], "rss_mib", "threads")
    _positive(part["after_one_record_each"], "rss_mib", "threads", "seconds")
    assert part["idle_cpu_percent"] >= 0
    _positive(restart, "log_bytes", "records", "ready_seconds", "serving_seconds")
    assert restart["serving_seconds"] >= restart["ready_seconds"]


def test_results_are_written_with_machine_and_config(bench_run):
    doc = bench_run["doc"]
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["cpu_model"]
    assert doc["config"]["quick"] is True and doc["config"]["records"] == RECORDS
    stamped = bench_run["out"] / f"{doc['timestamp']}.json"
    assert json.loads(stamped.read_text()) == doc
    assert "| shoal |" in bench_run["stdout"]


def test_latency_plot_is_a_png(bench_run):
    pytest.importorskip("matplotlib")
    png = bench_run["img"] / "latency_cdf.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_server_is_stopped_and_its_temp_dir_removed(bench_run):
    tmp = bench_run["tmp"]
    assert sorted(p.name for p in tmp.iterdir() if p.name.startswith("shoal-bench-")) == []
    left = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(tmp).encode() in (proc / "cmdline").read_bytes():
                    left.append(proc.name)
            except OSError:
                continue
    assert left == []
