"""``shoal topology show|validate|plan|apply`` against real brokers."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from shoal.router import hashing
from tests.harness import LocalCluster, free_port, http_json

SHOAL = [sys.executable, "-m", "shoal.router.cli.main"]


def shoal(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SHOAL, *args, "--config", str(cluster.config_path)], cwd=cluster.root, capture_output=True, text=True, timeout=60
    )


def candidate(cluster: LocalCluster, name: str, **changes) -> Path:
    config = copy.deepcopy(cluster.config)
    config.update(changes)
    path = cluster.root / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def epochs(cluster: LocalCluster) -> list[int]:
    return [http_json("GET", url + "/v1/health")[1]["epoch"] for url in cluster.urls]


def produce(url: str, topic: str, partition: int) -> int:
    status, body = http_json(
        "POST", f"{url}/v1/topics/{topic}/partitions/{partition}/records", {"records": [{"value": "x"}]}
    )
    assert status == 200, body
    return body["base_offset"]


@pytest.fixture
def started(tmp_path):
    """Extra broker processes a test starts itself; stopped afterwards."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        proc.terminate()
        proc.wait(15)


def start_broker(started: list, config: Path, broker_id: int, url: str) -> None:
    """Start one more broker from ``config`` and wait until it answers its health check."""
    with open(config.parent / f"extra-{broker_id}.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "shoal.broker", "--config", str(config), "--id", str(broker_id)],
                                stdout=log, stderr=subprocess.STDOUT, cwd=config.parent)
    started.append(proc)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if http_json("GET", url + "/v1/health", timeout=1)[0] == 200:
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"broker {broker_id} did not start: {(config.parent / f'extra-{broker_id}.log').read_text()}")


def test_apply_adds_topics_and_config_without_restarts(cluster_factory):
    cluster = cluster_factory(3, {"orders": 6})
    topics = {"orders": {"partitions": 6, "retention_ms": 1000}, "payments": {"partitions": 4}}
    new = candidate(cluster, "epoch2.yaml", epoch=2, topics=topics)

    plan = shoal(cluster, "topology", "plan", str(new), "-o", "json")
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout) == {
        "cluster": "test",
        "from_epoch": 1,
        "to_epoch": 2,
        "changes": [
            {"op": "~", "kind": "topic", "name": "orders", "detail": "retention_ms 604800000 -> 1000"},
            {"op": "+", "kind": "topic", "name": "payments", "detail": "4 partitions"},
        ],
        "moves": [],
        "warnings": [],
        "refusals": [],
    }
    assert epochs(cluster) == [1, 1, 1]

    applied = shoal(cluster, "topology", "apply", str(new))
    assert applied.returncode == 0, applied.stderr
    header = f"ID  URL{' ' * (len(cluster.urls[0]) - 3)}  STATUS"
    assert applied.stdout.split("BROKERS\n", 1)[1].splitlines() == [header] + [
        f"{i}   {url}  OK" for i, url in enumerate(cluster.urls, 1)
    ]
    assert epochs(cluster) == [2, 2, 2]
    owner = cluster.owner("payments", 3)
    assert produce(cluster.url(owner), "payments", 3) == 0
    assert http_json("GET", cluster.urls[0] + "/v1/cluster")[1]["topics"]["orders"]["retention_ms"] == 1000

    again = shoal(cluster, "topology", "apply", str(new), "-o", "json")
    assert again.returncode == 0, again.stderr
    assert {b["status"] for b in json.loads(again.stdout)["brokers"]} == {"OK (already at epoch 2)"}

    stale = candidate(cluster, "stale.yaml", epoch=2, topics={**topics, "late": {}})
    refused = shoal(cluster, "topology", "apply", str(stale))
    assert refused.returncode == 1
    assert refused.stderr == f"unable to apply topology: refused:\n  epoch 2 is not newer than the running epoch 2: set epoch: 3 in {stale}\n"


def grow(cluster: LocalCluster) -> tuple[Path, str, list[int]]:
    """A candidate adding broker 4: its file, broker 4's URL, the orders partitions it wins."""
    url4 = f"http://127.0.0.1:{free_port()}"
    brokers = cluster.config["brokers"] + [{"id": 4, "url": url4, "data_dir": str(cluster.root / "broker-4")}]
    moving = [p for p in range(12) if hashing.owner("orders", p, [1, 2, 3, 4]) == 4]
    assert moving, "the vector must move something to broker 4"
    return candidate(cluster, "grown.yaml", epoch=2, brokers=brokers), url4, moving


def test_new_broker_must_run_before_apply(cluster_factory):
    cluster = cluster_factory(3, {"orders": 12})
    grown, url4, _ = grow(cluster)
    plan = shoal(cluster, "topology", "plan", str(grown), "-o", "json")
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["refusals"] == [
        f"broker 4 at {url4} does not answer (connection refused): start it before applying"
    ]


def test_partition_with_data_is_never_moved(cluster_factory, started):
    cluster = cluster_factory(3, {"orders": 12})
    grown, url4, moving = grow(cluster)
    start_broker(started, grown, 4, url4)
    full = moving[0]
    src = hashing.owner("orders", full, [1, 2, 3])
    produce(cluster.url(src), "orders", full)

    plan = shoal(cluster, "topology", "plan", str(grown))
    assert plan.returncode == 0, plan.stderr
    assert f"orders/{full}  " in plan.stdout
    reason = f"orders/{full} holds data (high watermark 1) and would move from broker {src} to broker 4"
    assert plan.stdout.endswith(f"REFUSED\n{reason}\n")

    refused = shoal(cluster, "topology", "apply", str(grown))
    assert refused.returncode == 1
    assert refused.stderr == f"unable to apply topology: refused:\n  {reason}\n"
    assert epochs(cluster) == [1, 1, 1]


def test_new_broker_takes_over_empty_partitions(cluster_factory, started):
    cluster = cluster_factory(3, {"orders": 12})
    grown, url4, moving = grow(cluster)
    start_broker(started, grown, 4, url4)
    applied = shoal(cluster, "topology", "apply", str(grown))
    assert applied.returncode == 0, applied.stderr
    assert epochs(cluster) == [2, 2, 2]
    assert produce(url4, "orders", moving[0]) == 0
    src = hashing.owner("orders", moving[0], [1, 2, 3])
    status, body = http_json(
        "POST", f"{cluster.url(src)}/v1/topics/orders/partitions/{moving[0]}/records", {"records": [{"value": "x"}]}
    )
    assert (status, body["code"], body["owner_id"]) == (421, "NOT_OWNER", 4)


def test_dropping_partitions_or_topics_with_data_is_refused(cluster_factory):
    cluster = cluster_factory(3, {"orders": 6, "old": 2})
    produce(cluster.url(cluster.owner("orders", 5)), "orders", 5)
    produce(cluster.url(cluster.owner("old", 1)), "old", 1)
    shrunk = candidate(cluster, "shrunk.yaml", epoch=2, topics={"orders": {"partitions": 5}})
    refused = shoal(cluster, "topology", "apply", str(shrunk))
    assert refused.returncode == 1
    assert refused.stderr == (
        "unable to apply topology: refused:\n"
        "  orders/5 holds data (high watermark 1) and would be removed\n"
        "  topic old holds data (partitions 1): deleting it needs --delete-topics (or shoal topic delete)\n"
    )
    dropped = candidate(cluster, "dropped.yaml", epoch=2, topics={"orders": {"partitions": 6}})
    applied = shoal(cluster, "topology", "apply", str(dropped), "--delete-topics")
    assert applied.returncode == 0, applied.stderr
    assert "- topic old: 2 partitions\n" in applied.stdout
    assert "old" not in http_json("GET", cluster.urls[2] + "/v1/cluster")[1]["topics"]


def test_show_and_validate(cluster_factory, tmp_path):
    cluster = cluster_factory(2, {"orders": 2}, start=False)
    show = shoal(cluster, "topology", "show", "-o", "json")
    assert show.returncode == 0, show.stderr
    view = json.loads(show.stdout)
    assert view["brokers"][0] == {"id": 1, "url": cluster.url(1), "data_dir": str(cluster.root / "broker-1")}
    assert view["owners"]["orders"] == [hashing.owner("orders", p, [1, 2]) for p in range(2)]

    ok = shoal(cluster, "topology", "validate")
    assert ok.stdout == f"{cluster.config_path} is valid: cluster test, epoch 1, 2 brokers, 1 topics, 2 partitions\n"
    bad = tmp_path / "bad.yaml"
    bad.write_text("brokers:\n  - {id: 1, url: 'http://h:1'}\ntopics:\n  orders: {partitions: 0}\n")
    invalid = shoal(cluster, "topology", "validate", str(bad))
    assert invalid.returncode == 1
    assert invalid.stderr == (
        f"unable to validate topology: {bad}:4: topics.orders.partitions: must be an integer >= 1, got 0\n"
    )
