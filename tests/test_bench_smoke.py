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
SYSTEMS = ("shoal", "shoal-bulk", "shoal-raw", "confluent-kafka", "redis", "nats")
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
        timeout=400,
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


# --- the statistics and pacing every system is measured with -------------------------


def test_before_after_table_compares_the_median_run_of_each_path():
    from bench.report import _before_after

    def paths(*rows):
        return {"floor_ns": {"await trivial coroutine": 70.0},
                "paths": [{"path": p, "records_per_s": r, "cpu_us_per_record": c} for p, r, c in rows]}  # fmt: skip

    before = {"revision": "v0", "commit": "0123456789abcdef", **paths(("send()", 100, 4.0), ("send()", 300, 2.0),
                                                                       ("send()", 200, 3.0))}  # fmt: skip
    after = paths(("send()", 500, 1.0), ("getmany()", 900, 0.5))
    table = _before_after(before, after)
    assert "| send() | 200 | 500 | 2.50x | 3.00 | 1.00 |" in table
    assert "| getmany() | - | 900 | - | - | 0.50 |" in table  # a path the earlier revision lacked
    assert _before_after({"revision": "v0", "error": "no such revision"}, after)[-1] == "Client paths of v0: no such revision"


def test_percentile_is_nearest_rank():
    from shoal.router.cli.bench_driver import percentile

    values = list(range(1, 101))
    assert [percentile(values, q) for q in (1, 50, 99, 99.9, 100)] == [1, 50, 99, 100, 100]
    assert percentile([7.0], 99.9) == 7.0


def test_latency_summary_is_in_milliseconds_and_ordered():
    from shoal.router.cli.bench_driver import LatencySummary

    summary = LatencySummary.of([i / 1000 for i in range(1, 1001)])  # 1..1000 ms
    assert (summary.count, summary.p50_ms, summary.p99_ms, summary.p999_ms, summary.max_ms) == (
        1000, 500, 990, 999, 1000)  # fmt: skip
    assert summary.cdf[-1] == (1.0, 1000)
    assert LatencySummary.of([]) is None


def test_key_source_modes():
    from shoal.router.cli.bench_driver import BenchError, key_source

    assert key_source("none")(5) is None
    assert [key_source("3")(i) for i in range(4)] == [b"key-0", b"key-1", b"key-2", b"key-0"]
    assert len(key_source("random")(0)) == 8
    for bad in ("0", "-2", "many"):
        with pytest.raises(BenchError, match="--keys"):
            key_source(bad)


async def test_pacer_hands_out_every_record_once_in_schedule_order():
    import time

    from shoal.router.cli.bench_driver import Pacer

    pacer = Pacer(2000, limit=40)
    due: list[float] = []
    while not pacer.done:
        batch = await pacer.due()
        assert batch and batch[-1] <= time.perf_counter()  # never handed out before it is due
        due.extend(batch)
    assert len(due) == 40 and await pacer.due() == []
    assert all(b - a == pytest.approx(1 / 2000) for a, b in zip(due, due[1:]))


# --- shoal bench produce|consume against a real broker --------------------------------


def _shoal(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shoal.router.cli.main", "--config", str(config), "bench", *args],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_shoal_bench_produce_then_consume_report_json(cluster_factory):
    cluster = cluster_factory(1, {"perf": 2})
    produced = _shoal(cluster.config_path, "produce", "-t", "perf", "-n", "3000", "--keys", "50", "-o", "json")
    assert produced.returncode == 0, produced.stderr
    view = json.loads(produced.stdout)
    assert (view["kind"], view["topic"], view["records"], view["errors"]) == ("produce", "perf", 3000, 0)
    _positive(view, "records_per_s", "mb_per_s", "bytes")
    assert view["latency"]["p50_ms"] <= view["latency"]["max_ms"]

    consumed = _shoal(cluster.config_path, "consume", "-t", "perf", "-n", "3000", "-o", "json")
    assert consumed.returncode == 0, consumed.stderr
    view = json.loads(consumed.stdout)
    assert (view["kind"], view["records"]) == ("consume", 3000)
    assert view["bytes"] == 3000 * 100 + sum(len(b"key-%d" % (i % 50)) for i in range(3000))


def test_shoal_bench_bulk_produce_then_consume_both_apis(cluster_factory):
    """--bulk sends through send_batch() (one latency sample per call); consume reads
    the same payload through getbatches() (the default) and getmany() (--records-api)."""
    cluster = cluster_factory(1, {"perf": 2})
    produced = _shoal(cluster.config_path, "produce", "-t", "perf", "-n", "2500", "--bulk", "1000",
                      "--keys", "7", "-o", "json")  # fmt: skip
    assert produced.returncode == 0, produced.stderr
    view = json.loads(produced.stdout)
    assert (view["records"], view["errors"], view["latency"]["count"]) == (2500, 0, 3)  # calls of 1000, 1000, 500
    key_bytes = sum(len(b"key-%d" % (i % 7)) for i in range(2500))
    assert view["bytes"] == 2500 * 100 + key_bytes

    for api in ((), ("--records-api",)):
        consumed = _shoal(cluster.config_path, "consume", "-t", "perf", "-n", "2500", *api, "-o", "json")
        assert consumed.returncode == 0, consumed.stderr
        view = json.loads(consumed.stdout)
        assert (view["records"], view["bytes"]) == (2500, 2500 * 100 + key_bytes), api


def test_shoal_bench_bulk_at_a_fixed_rate_times_every_record(cluster_factory):
    cluster = cluster_factory(1, {"perf": 3})
    done = _shoal(cluster.config_path, "produce", "-t", "perf", "-n", "600", "--throughput", "2000", "--bulk", "50",
                  "-p", "3", "-o", "json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    view = json.loads(done.stdout)
    assert (view["records"], view["errors"], view["latency"]["count"]) == (600, 0, 600)


def test_shoal_bench_text_output_and_fixed_rate(cluster_factory):
    cluster = cluster_factory(1, {"perf": 1})
    done = _shoal(cluster.config_path, "produce", "-t", "perf", "--duration", "0.5", "--throughput", "2000")
    assert done.returncode == 0, done.stderr
    assert "records produced in" in done.stdout and "records/s" in done.stdout and "p99.9" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("produce", "-t", "perf", "--keys", "lots"), "--keys must be none, random or a number"),
        (("produce", "-t", "perf", "-n", "0"), "--records must be at least 1"),
        (("produce", "-t", "perf", "-n", "10", "--bulk", "0"), "--bulk must be at least 1"),
        (("produce", "-t", "nope", "-n", "10"), "UNKNOWN_TOPIC"),
        (("consume", "-t", "perf", "-n", "5", "--idle-timeout", "0.5"), "read nothing from perf"),
    ],
)
def test_shoal_bench_bad_input_is_one_line(cluster_factory, args, message):
    cluster = cluster_factory(1, {"perf": 1})
    done = _shoal(cluster.config_path, *args)
    assert done.returncode == 1
    assert done.stderr.startswith("unable to run ") and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
