"""What an operator sees of replication, on real brokers and a real etcd: the replica
endpoints under ``auth:``, the metrics, the log lines, ``shoal cluster info`` and the
gateway while a follower lags and while a leader is frozen past its lease."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import msgpack
import pytest
import yaml

from shoal.router.cli.cluster import render_info
from shoal.router.server.auth import hash_token
from shoal.router.topology import load_topology
from tests.harness import http_json
from tests.metadata.helpers import scrape
from tests.router.test_cli_cluster import SHOAL
from tests.security.procs import start_gateway

OPS, BROKERS, APP = "ops-" + "o" * 40, "brokers-" + "b" * 40, "app-" + "a" * 40
AUTH = {
    "principals": {
        "ops": {"token_hash": hash_token(OPS), "admin": True},
        "brokers": {"token_hash": hash_token(BROKERS), "replication": True},
        "app": {"token_hash": hash_token(APP), "produce": ["orders"], "consume": ["orders"]},
    }
}
FAST = {"lease_ttl_ms": 2000, "replica_lag_time_max_ms": 2000}


def wait_for(check, timeout: float = 30.0, interval: float = 0.1):
    """``check()`` once it returns something truthy; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {check.__name__}"
        time.sleep(interval)
    return result


def orders_state(cluster, via: int, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        status, body = http_json("GET", cluster.url(via) + "/v1/cluster", timeout=2, headers=headers)
    except OSError:
        return None
    states = body.get("partitions", {}).get("orders") if status == 200 else None
    return states[0] if states else None


def in_sync(cluster, via: int, token: str | None = None):
    """orders/0's state once its ISR is full and its leader answers (a full ISR in etcd
    comes before the leader has taken up its epoch)."""
    state = orders_state(cluster, via, token)
    if not (state and state["leader"] >= 0 and len(state["isr"]) == 3):
        return None
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        status, _ = http_json("GET", cluster.url(state["leader"]) + "/v1/topics/orders/partitions/0/offsets",
                              timeout=2, headers=headers)  # fmt: skip
    except OSError:
        return None
    return state if status == 200 else None


def metrics(cluster, broker: int) -> dict[str, float]:
    return scrape(cluster.url(broker))


def replica_call(cluster, broker: int, path: str, body: dict, token: str | None) -> tuple[int, bytes]:
    req = urllib.request.Request(cluster.url(broker) + path, data=msgpack.packb(body), method="POST",
                                 headers={"Content-Type": "application/msgpack"})  # fmt: skip
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture
def secured(cluster_factory, etcd_server, cluster_name):
    cluster = cluster_factory(
        3, {"orders": 1}, start=False, name=cluster_name, metadata={"etcd": [etcd_server.url], **FAST},
        replication_factor=3, min_insync_replicas=2,
    )  # fmt: skip
    cluster.config["auth"] = AUTH
    cluster.config_path.write_text(yaml.safe_dump(cluster.config, sort_keys=False))
    return cluster


def test_replication_under_auth_needs_the_brokers_own_token(secured, monkeypatch):
    cluster = secured
    for env, why in ((None, "$SHOAL_BROKER_TOKEN, the token of a principal with replication: true; it is not set"),
                     (APP, "$SHOAL_BROKER_TOKEN is principal app's, which lacks replication: true")):  # fmt: skip
        if env is None:
            monkeypatch.delenv("SHOAL_BROKER_TOKEN", raising=False)
        else:
            monkeypatch.setenv("SHOAL_BROKER_TOKEN", env)
        refused = subprocess.run(
            [sys.executable, "-m", "shoal.broker", "--config", str(cluster.config_path), "--id", "1"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert refused.returncode == 1
        assert refused.stderr.startswith("unable to start broker 1: ") and why in refused.stderr, refused.stderr

    monkeypatch.setenv("SHOAL_BROKER_TOKEN", BROKERS)
    cluster.start()
    state = wait_for(lambda: in_sync(cluster, 1, OPS))
    leader = state["leader"]
    # acks=all answers only once the followers, fetching with their broker token, have the batch
    records = {"records": [{"value": f"v{i}"} for i in range(3)]}
    status, ack = http_json("POST", cluster.url(leader) + "/v1/topics/orders/partitions/0/records", records,
                            headers={"Authorization": f"Bearer {APP}"})  # fmt: skip
    assert (status, ack["base_offset"]) == (200, 0), ack
    fetch = {"replica_id": 99, "max_wait_ms": 0, "partitions": [["orders", 0, 0, state["leader_epoch"]]]}
    assert replica_call(cluster, leader, "/v1/replica/fetch", fetch, None)[0] == 401
    status, body = replica_call(cluster, leader, "/v1/replica/fetch", fetch, APP)
    assert status == 403 and b"lacks the replication permission" in body
    status, body = replica_call(cluster, leader, "/v1/replica/epoch-end", {"partitions": []}, APP)
    assert status == 403
    # the followers' fetch stream (the acks=all above went through it) is refused alike
    stream = cluster.url(leader) + "/v1/replica/stream"
    assert http_json("GET", stream)[0] == 401
    assert http_json("GET", stream, headers={"Authorization": f"Bearer {APP}"})[0] == 403
    status, body = replica_call(cluster, leader, "/v1/replica/fetch", fetch, BROKERS)
    assert status == 200 and msgpack.unpackb(body)["partitions"][0][:2] == [None, 3]


def test_a_lagging_follower_and_a_frozen_leader_as_an_operator_sees_them(cluster_factory, etcd_server, cluster_name, tmp_path):
    # scratch has one replica per partition: those of a frozen broker are offline
    cluster = cluster_factory(
        3, {"orders": 1, "scratch": {"partitions": 6, "replication_factor": 1, "min_insync_replicas": 1}}, name=cluster_name,
        metadata={"etcd": [etcd_server.url], **FAST}, replication_factor=3, min_insync_replicas=2,
    )  # fmt: skip
    state = wait_for(lambda: in_sync(cluster, 1))
    leader, epoch = state["leader"], state["leader_epoch"]
    follower = next(r for r in state["replicas"] if r != leader)
    post = f"{cluster.url(leader)}/v1/topics/orders/partitions/0/records"
    assert http_json("POST", post, {"records": [{"value": "a"}, {"value": "b"}]})[0] == 200

    # a follower frozen past replica_lag_time_max_ms leaves the ISR; its lag shows
    cluster.procs[follower].send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: metrics(cluster, leader)["shoal_isr_shrinks_total"] >= 1)
        assert http_json("POST", post, {"records": [{"value": "c"}]})[0] == 200  # the ISR is 2 = min_insync
        # under-replicated: at least every partition the leader leads with the frozen follower
        # as a replica (orders/0 and the internal __consumer_offsets partitions it leads)
        followed = [k for k in metrics(cluster, leader) if k.startswith(f'shoal_follower_lag_records{{follower="{follower}",')]
        assert 'shoal_follower_lag_records{follower="%s",partition="0",topic="orders"}' % follower in followed
        m = wait_for(lambda: (m := metrics(cluster, leader))["shoal_under_replicated_partitions"] >= len(followed) and m)
        assert m["shoal_under_min_isr_partitions"] == 0
        lag = f'shoal_follower_lag_records{{follower="{follower}",partition="0",topic="orders"}}'
        assert m[lag] == 1 and m["shoal_follower_max_lag_records"] == 1
        assert m['shoal_partition_high_watermark{partition="0",topic="orders"}'] == 3
    finally:
        cluster.procs[follower].send_signal(signal.SIGCONT)
    # every partition the follower rejoins expands on its own: wait for the last, not the first
    m = wait_for(lambda: (m := metrics(cluster, leader))["shoal_under_replicated_partitions"] == 0 and m)
    assert m["shoal_isr_expands_total"] >= 1 and m["shoal_under_replicated_partitions"] == 0 and m[lag] == 0 and m["shoal_leader_partitions"] >= 1
    log = cluster.log_path(leader).read_text()
    assert re.search(rf"broker {leader}: ISR shrink of orders/0 at epoch {epoch}: \[[\d,]+\] -> \[[\d,]+\] "
                     rf"\(broker {follower}: it was behind for over 2s\)", log), log  # fmt: skip
    assert f"ISR expand of orders/0 at epoch {epoch}: " in log and f"(broker {follower}: it caught up)" in log

    # the leader frozen past its lease: another takes over; cluster info and the gateway show it
    topology = load_topology(cluster.config_path)
    stranded = [p for p in range(6) if topology.replicas("scratch", p) == [leader]]
    assert stranded, "the test needs a scratch partition on the frozen broker"
    gateway_proc, gateway = start_gateway(cluster.config_path, tmp_path)
    cluster.procs[leader].send_signal(signal.SIGSTOP)
    try:
        survivor = follower
        new = wait_for(lambda: (s := orders_state(cluster, survivor)) and s["leader"] != leader and s)
        assert new["leader_epoch"] == epoch + 1 and leader not in new["isr"]
        # both wait ~3 s for the frozen broker: side by side
        info = subprocess.Popen([*SHOAL, "cluster", "info", "-o", "json", "--config", str(cluster.config_path)],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        status, body = http_json("GET", gateway + "/v1/cluster", timeout=15)
        out, err = info.communicate(timeout=60)
        assert info.returncode == 0, err
        view = json.loads(out)
        assert {b["id"]: b["status"] for b in view["brokers"]}[leader] == "down"
        assert [(p["topic"], p["partition"], p["leader"]) for p in view["under_replicated"]] == [("orders", 0, new["leader"])]
        assert [(p["topic"], p["partition"]) for p in view["offline"]] == [("scratch", p) for p in stranded]
        text = render_info(view)
        assert f"UNDER-REPLICATED  1\nOFFLINE           {len(stranded)}\n" in text
        assert "UNDER-REPLICATED PARTITIONS\nTOPIC   PARTITION  LEADER  LEADER-EPOCH  REPLICAS  ISR\norders  0  " in text

        assert status == 200 and [p["partition"] for p in body["offline"]] == stranded
        assert [(p["topic"], p["isr"]) for p in body["under_replicated"]] == [("orders", new["isr"])]
        assert body["owners"]["orders"] == [new["leader"]]
        status, ack = http_json("POST", gateway + "/v1/topics/orders/partitions/0/records", {"records": [{"value": "d"}]})
        assert (status, ack["base_offset"]) == (200, 3), ack
        m = metrics(cluster, new["leader"])
        # orders/0, and __consumer_offsets partitions it took over (the metric counts internal ones)
        assert m["shoal_leader_elections_won_total"] >= 1 and m["shoal_under_replicated_partitions"] >= 1
    finally:
        cluster.procs[leader].send_signal(signal.SIGCONT)
        gateway_proc.stop()
    wait_for(lambda: f"no longer leads orders/0: broker {new['leader']} leads it at epoch {epoch + 1}" in cluster.log_path(leader).read_text())
    elected = cluster.log_path(new["leader"]).read_text()
    assert f"broker {new['leader']} elected leader of orders/0 at epoch {epoch + 1} (leader {leader} was not live" in elected


