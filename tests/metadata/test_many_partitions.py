"""Many partitions on real brokers and a real etcd: a change of one partition's state
costs a broker work for that partition, not for every partition it holds."""

from __future__ import annotations

import asyncio

from shoal.client.structs import TopicPartition
from shoal.router.metadata.etcd import EtcdClient
from shoal.router.metadata.store import MetadataStore
from tests.harness import http_json
from tests.metadata.test_replication_ops import metrics, wait_for

PARTITIONS = 300
APPLIED = "shoal_partition_states_applied_total"


def _settled(cluster, via: int) -> bool:
    try:
        status, body = http_json("GET", cluster.url(via) + "/v1/cluster", timeout=5)
    except OSError:
        return False
    states = body.get("partitions", {}).get("many") if status == 200 else None
    return bool(states) and len(states) == PARTITIONS and all(s and s["leader"] >= 0 and len(s["isr"]) == 3 for s in states)


async def test_one_state_change_is_applied_alone(cluster_factory, etcd_server, cluster_name):
    """An ISR shrink of one partition (and the leader's expand back) makes every broker apply
    that partition's state again, not the states of all its partitions."""
    cluster = cluster_factory(
        3, {"many": PARTITIONS}, name=cluster_name,
        metadata={"etcd": [etcd_server.url], "lease_ttl_ms": 2000, "replica_lag_time_max_ms": 2000},
        replication_factor=3, min_insync_replicas=2,
    )  # fmt: skip
    for b in (1, 2, 3):
        wait_for(lambda: _settled(cluster, b) and metrics(cluster, b)[APPLIED] >= PARTITIONS)
    before = {b: metrics(cluster, b)[APPLIED] for b in (1, 2, 3)}
    tp = TopicPartition("many", 0)
    async with EtcdClient([etcd_server.url]) as etcd:
        store = MetadataStore(etcd, cluster_name)
        state = await store.partition(tp)
        follower = next(r for r in state.replicas if r != state.leader)
        shrunk = await store.shrink_isr(tp, state, follower)  # as the leader would
        # The follower is caught up: its leader adds it back, a second change.
        expanded = await _poll_state(store, tp, lambda s: len(s.isr) == 3 and s.mod_revision > shrunk.mod_revision)
    for b in (1, 2, 3):
        # At least one reconcile since (the two changes may come to it together).
        wait_for(lambda: metrics(cluster, b)[APPLIED] > before[b])
        wait_for(lambda: _settled(cluster, b))
    after = {b: metrics(cluster, b)[APPLIED] for b in (1, 2, 3)}
    assert expanded.leader == state.leader
    for b in (1, 2, 3):
        assert after[b] - before[b] < 20, f"broker {b} applied {after[b] - before[b]} states for two changes of one partition"


async def _poll_state(store, tp, check, timeout: float = 30):
    async with asyncio.timeout(timeout):
        while not check(state := await store.partition(tp)):
            await asyncio.sleep(0.05)
    return state
