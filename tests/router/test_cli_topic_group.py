"""``shoal topic ...`` and ``shoal group ...`` through the real entry point, against real brokers."""

from __future__ import annotations

import json
import subprocess
import sys

from shoal.client.partitioner import partition_for_key
from shoal.router.topology import load_topology
from tests.harness import LocalCluster, http_json

SHOAL = [sys.executable, "-m", "shoal.router.cli.main"]


def shoal(cluster: LocalCluster, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SHOAL, *args, "--config", str(cluster.config_path)],
        cwd=cluster.root, input=stdin, capture_output=True, text=True, timeout=60,
    )


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr
    return result


def epochs(cluster: LocalCluster) -> list[int]:
    return [http_json("GET", url + "/v1/health")[1]["epoch"] for url in cluster.urls]


def test_topic_lifecycle(cluster_factory):
    cluster = cluster_factory(3, {"orders": 3})
    cluster.config_path.write_text("# our test cluster\n" + cluster.config_path.read_text())

    created = ok(shoal(cluster, "topic", "create", "payments", "-p", "4", "-c", "flush=always"))
    assert created.stdout == "TOPIC     STATUS\npayments  OK\n"
    assert created.stderr == f"{cluster.config_path}: epoch 2, applied to the cluster\n"
    assert cluster.config_path.read_text().startswith("# our test cluster\n")
    config = load_topology(cluster.config_path)
    assert (config.epoch, config.topics["payments"].partitions, config.topics["payments"].flush) == (2, 4, "always")
    assert epochs(cluster) == [2, 2, 2]

    again = shoal(cluster, "topic", "create", "payments", "bad/name", "-o", "json")
    assert again.returncode == 1
    assert [(r["name"], r["status"]) for r in json.loads(again.stdout)["topics"]] == [
        ("payments", "TOPIC_ALREADY_EXISTS"), ("bad/name", "INVALID_REQUEST")
    ]
    assert load_topology(cluster.config_path).epoch == 2  # nothing to add: the file is untouched

    listed = json.loads(ok(shoal(cluster, "topic", "list", "-o", "json")).stdout)
    assert [(t["name"], t["partitions"]) for t in listed] == [("orders", 3), ("payments", 4)]

    produced = ok(shoal(cluster, "topic", "produce", "payments", "-K", ":", stdin="k1:v1\nk2:v2\nk1:v3\n"))
    expected, next_offset = [], {}
    for key, value in (("k1", "v1"), ("k2", "v2"), ("k1", "v3")):
        p = partition_for_key(key.encode(), 4)
        expected.append((p, next_offset.setdefault(p, 0), key, value))
        next_offset[p] += 1
    assert [line.rsplit("@", 1) for line in produced.stdout.splitlines()] == [
        [f"payments/{p}", str(offset)] for p, offset, _, _ in expected
    ]

    consumed = ok(shoal(cluster, "topic", "consume", "payments", "-e", "-o", "json"))
    records = [json.loads(line) for line in consumed.stdout.splitlines()]
    assert sorted((r["partition"], r["offset"], r["key"], r["value"]) for r in records) == sorted(expected)

    described = json.loads(ok(shoal(cluster, "topic", "describe", "payments", "-o", "json")).stdout)
    assert sum(p["high_watermark"] for p in described[0]["partitions"]) == 3
    assert [p["owner"] for p in described[0]["partitions"]] == config.owners("payments")

    deleted = ok(shoal(cluster, "topic", "delete", "payments"))
    assert deleted.stdout == "TOPIC     STATUS\npayments  OK\n"
    assert "payments" not in cluster.config_path.read_text()
    assert "payments" not in http_json("GET", cluster.urls[1] + "/v1/cluster")[1]["topics"]
    assert epochs(cluster) == [3, 3, 3]


def test_create_with_the_cluster_down_leaves_the_file_alone(cluster_factory):
    cluster = cluster_factory(2, {"orders": 1}, start=False)
    before = cluster.config_path.read_text()
    result = shoal(cluster, "topic", "create", "payments")
    assert result.returncode == 1
    assert result.stderr.startswith("unable to create topic: no broker answered (")
    assert cluster.config_path.read_text() == before

    offline = ok(shoal(cluster, "topic", "create", "payments", "--no-apply"))
    assert offline.stderr == f"{cluster.config_path}: epoch 2, not applied (--no-apply)\n"
    assert "payments" in load_topology(cluster.config_path).topics


def test_create_in_a_replicated_file_checks_the_factor_against_its_brokers(cluster_factory):
    cluster = cluster_factory(3, {"orders": 1}, start=False, metadata={"etcd": ["http://127.0.0.1:1"]},
                              replication_factor=3, min_insync_replicas=2)
    ok(shoal(cluster, "topic", "create", "payments", "--no-apply"))
    assert load_topology(cluster.config_path).topics["payments"].replication_factor == 3

    result = shoal(cluster, "topic", "create", "wide", "-c", "replication_factor=4", "--no-apply")
    assert result.returncode == 1
    assert result.stderr == "unable to create topic: --topic-config: replication_factor: is 4, more than the 3 brokers\n"


def test_bad_topic_config_is_one_line(cluster_factory):
    cluster = cluster_factory(1, {}, start=False)
    result = shoal(cluster, "topic", "create", "t", "-c", "flush=sometimes", "-c", "retention_ms=-1")
    assert result.returncode == 1
    assert result.stderr == (
        "unable to create topic: --topic-config: flush: must be one of always, interval, never, got 'sometimes'; "
        "--topic-config: retention_ms: must be null or an integer >= 1, got -1\n"
    )


def test_group_describe_and_seek(cluster_factory):
    cluster = cluster_factory(3, {"orders": 2})
    ok(shoal(cluster, "topic", "produce", "orders", "-p", "0", stdin="a\nb\nc\nd\ne\n"))
    read = ok(shoal(cluster, "topic", "consume", "orders", "-p", "0", "-g", "billing", "-n", "3"))
    assert read.stdout == "a\nb\nc\n"

    def committed() -> tuple[int, int, int]:
        view = json.loads(ok(shoal(cluster, "group", "describe", "billing", "-o", "json")).stdout)
        row = next(r for r in view["partitions"] if r["partition"] == 0)
        return row["current_offset"], row["log_end_offset"], row["lag"]

    assert committed() == (3, 5, 2)
    assert json.loads(ok(shoal(cluster, "group", "list", "-o", "json")).stdout) == [
        {"group": "billing", "topics": ["orders"], "partitions": 1, "lag": 2}
    ]

    dry = ok(shoal(cluster, "group", "seek", "billing", "--to", "earliest"))
    assert dry.stdout == "TOPIC   PARTITION  CURRENT-OFFSET  NEW-OFFSET\norders  0          3               0\n"
    assert dry.stderr == "dry run: nothing changed; add --execute to commit these offsets\n"
    assert committed() == (3, 5, 2)

    ok(shoal(cluster, "group", "seek", "billing", "--shift-by", "1", "--execute"))
    assert committed() == (4, 5, 1)
    ok(shoal(cluster, "group", "seek", "billing", "--to-timestamp", "0", "-t", "orders:0", "--execute"))
    assert committed() == (0, 5, 5)
    assert ok(shoal(cluster, "topic", "consume", "orders", "-g", "billing", "-e")).stdout == "a\nb\nc\nd\ne\n"
    assert committed() == (5, 5, 0)

    both = shoal(cluster, "group", "seek", "billing", "--to", "latest", "--shift-by", "1")
    assert both.returncode == 2
    assert both.stderr == (
        "shoal group seek: give exactly one of --to, --to-timestamp, --to-datetime, --shift-by "
        "(see shoal group seek --help)\n"
    )
    missing = shoal(cluster, "group", "describe", "nobody")
    assert (missing.returncode, missing.stderr) == (1, "unable to describe group: group nobody has no members and no committed offsets\n")
