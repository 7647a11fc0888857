"""Real brokers of a replicated cluster.yaml against a real etcd: each registers with a lease,
partition states are created once, and GET /v1/cluster shows them per partition."""

from __future__ import annotations

import asyncio

import pytest

from shoal.router import hashing
from shoal.router.metadata.etcd import EtcdClient
from shoal.router.metadata.store import MetadataStore
from tests.harness import http_json
from tests.metadata.helpers import poll


@pytest.fixture
def replicated(cluster_factory, etcd_server, cluster_name):
    """Three brokers, factor 3, on the session's etcd (2 s leases)."""

    def make(**kwargs):
        return cluster_factory(
            3, {"orders": 4, "audit": {"partitions": 1, "replication_factor": 1, "min_insync_replicas": 1}},
            name=cluster_name, metadata={"etcd": [etcd_server.url], "lease_ttl_ms": 2000},
            replication_factor=3, min_insync_replicas=2, **kwargs,
        )  # fmt: skip

    return make


async def cluster_partitions(url: str):
    """The ``partitions`` of GET /v1/cluster once every state is known, else None."""
    status, body = await asyncio.to_thread(http_json, "GET", url + "/v1/cluster")
    parts = body.get("partitions", {}) if status == 200 else {}
    known = parts and all(s is not None for states in parts.values() for s in states)
    return parts if known else None


async def test_brokers_register_and_show_partition_states(replicated, etcd_server, cluster_name):
    cluster = replicated()
    async with EtcdClient([etcd_server.url]) as etcd:
        store = MetadataStore(etcd, cluster_name)
        await poll(lambda: _live_is(store, {1, 2, 3}), timeout=20)
        for url in cluster.urls:
            parts = await poll(lambda: cluster_partitions(url), timeout=20)
            assert sorted(parts) == ["audit", "orders"]
            for p, state in enumerate(parts["orders"]):
                replicas = hashing.rank("orders", p, [1, 2, 3])
                assert state == {"leader": replicas[0], "leader_epoch": 0, "replicas": replicas, "isr": replicas,
                                 "adding": [], "removing": []}
            [audit] = parts["audit"]
            assert audit["replicas"] == [hashing.owner("audit", 0, [1, 2, 3])] == [audit["leader"]]
        # Created once: three brokers raced to create them, every state is at version 1.
        kvs, _ = await etcd.range(store.prefix + b"partitions/")
        # 5 declared partitions, and the 8 of the internal __consumer_offsets topic
        topics = [kv.key[len(store.prefix + b"partitions/"):].split(b"/")[0] for kv in kvs]
        assert sorted(set(topics)) == [b"__consumer_offsets", b"audit", b"orders"] and len(kvs) == 5 + 8
        assert {kv.version for kv in kvs} == {1}
        assert (await store.topology()).epoch == 1


async def _live_is(store, ids):
    live, _ = await store.live_brokers()
    return set(live) == ids


async def test_stopped_broker_deregisters_killed_one_lapses_restarted_one_returns(replicated, etcd_server, cluster_name):
    cluster = replicated()
    async with EtcdClient([etcd_server.url]) as etcd:
        store = MetadataStore(etcd, cluster_name)
        await poll(lambda: _live_is(store, {1, 2, 3}), timeout=20)
        cluster.terminate(2)  # a clean stop revokes the lease: the key goes at once
        await poll(lambda: _live_is(store, {1, 3}), timeout=5)
        cluster.kill(3)  # SIGKILL: the key lapses with the lease
        await poll(lambda: _live_is(store, {1}), timeout=15)
        cluster.start(3)
        await poll(lambda: _live_is(store, {1, 3}), timeout=20)


async def test_a_new_topic_applied_over_http_gets_partition_states(replicated, etcd_server, cluster_name):
    cluster = replicated()
    await poll(lambda: cluster_partitions(cluster.urls[0]), timeout=20)
    _, body = http_json("GET", cluster.urls[0] + "/v1/cluster")
    body["epoch"] = 2
    body["topics"]["payments"] = {**body["topics"]["orders"], "partitions": 2}
    for url in cluster.urls:
        status, answer = http_json("PUT", url + "/v1/cluster", body)
        assert status == 200, answer
    parts = await poll(lambda: _has_topic(cluster.urls[1], "payments"), timeout=20)
    assert [s["replicas"] for s in parts["payments"]] == [hashing.rank("payments", p, [1, 2, 3]) for p in range(2)]
    async with EtcdClient([etcd_server.url]) as etcd:
        assert (await MetadataStore(etcd, cluster_name).topology()).epoch == 2


async def _has_topic(url, topic):
    parts = await cluster_partitions(url)
    return parts if parts and topic in parts else None


async def test_a_broker_whose_lease_is_lost_registers_again(replicated, etcd_server, cluster_name):
    cluster = replicated()
    async with EtcdClient([etcd_server.url]) as etcd:
        store = MetadataStore(etcd, cluster_name)
        await poll(lambda: _live_is(store, {1, 2, 3}), timeout=20)
        key = store.prefix + b"brokers/1"
        old = (await etcd.get(key)).lease
        await etcd.revoke(old)  # as if etcd had expired it
        again = await poll(lambda: _leased_by_other(etcd, key, old), timeout=20)
        assert again.lease != old
    assert "lost its etcd registration" in cluster.tail(1)


async def _leased_by_other(etcd, key, lease):
    kv = await etcd.get(key)
    return kv if kv is not None and kv.lease != lease else None
