"""The compose cluster as users run it: produce, consume, the gateway, health, the CLI,
the Kafka listeners, a topic created on the host, a consumer in a container.

All tests share one cluster of deploy/docker-compose.yml (etcd, three brokers
replicating every partition, the gateway; named volumes; host networking) and talk to it
from this host with shoal.client, as a user would. Leader failover is in test_failover.py.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.client import AsyncConsumer, AsyncProducer, TopicPartition
from tests.e2e.compose import ComposeCluster, wait_for
from tests.harness import http_json
from tests.kafka.helpers import poll_messages

pytestmark = pytest.mark.e2e

CONSUMER_APP = Path(__file__).with_name("consumer_app.py")
SERVICES = ["etcd", "broker-1", "broker-2", "broker-3", "gateway"]


def shoal_cli(cluster: ComposeCluster, *args: str) -> subprocess.CompletedProcess:
    """The admin CLI of this host's venv against the cluster's cluster.yaml."""
    shoal = Path(sys.executable).with_name("shoal")
    return subprocess.run([str(shoal), "--config", str(cluster.config_path), *args],
                          capture_output=True, text=True, timeout=60)


def make_producer(cluster: ComposeCluster) -> AsyncProducer:
    """acks=all (the default); retries close together, to follow a leader that moved."""
    return AsyncProducer(cluster.urls, retry_backoff_ms=50, retry_backoff_max_ms=500)


async def produce(cluster: ComposeCluster, topic: str, values: list[str]) -> None:
    """Send ``values``, each keyed by itself, and wait for every acknowledgement."""
    async with make_producer(cluster) as producer:
        await asyncio.gather(*[await producer.send(topic, v, key=v) for v in values])


async def test_produce_and_consume_across_all_brokers(cluster):
    topic, partitions = "orders", 12
    async with asyncio.timeout(90):
        async with AsyncProducer(str(cluster.config_path)) as producer:
            futures = [await producer.send(topic, f"order-{i}", key=f"user-{i % 40}") for i in range(600)]
            metas = await asyncio.gather(*futures)
        assert {m.partition for m in metas} == set(range(partitions))

        by_key: dict[str, list[str]] = {}
        async with AsyncConsumer(topic, bootstrap=str(cluster.config_path), group="orders-app") as consumer:
            while sum(map(len, by_key.values())) < 600:
                for records in (await consumer.getmany(timeout_ms=1000)).values():
                    for r in records:
                        by_key.setdefault(r.key.decode(), []).append(r.value.decode())
            await consumer.commit()
            for p in range(partitions):
                hwm = sum(1 for m in metas if m.partition == p)
                assert (await consumer.committed(TopicPartition(topic, p))).offset == hwm
    assert sum(map(len, by_key.values())) == 600
    for key, values in by_key.items():  # per key, in the order sent
        assert values == [f"order-{i}" for i in range(600) if f"user-{i % 40}" == key]

    # Every partition is on all three brokers, and the leaders are spread over them.
    states = cluster.view()["partitions"][topic]
    assert all(sorted(s["replicas"]) == [1, 2, 3] and sorted(s["isr"]) == [1, 2, 3] for s in states), states
    assert len({s["leader"] for s in states}) > 1, states

    # The gateway serves every partition to clients that do not route themselves.
    for p in range(partitions):
        status, body = http_json("GET", f"{cluster.gateway_url}/v1/topics/{topic}/partitions/{p}/records?offset=0",
                                 headers={"Accept": "application/json"})
        assert status == 200, body
        assert [r["value"] for r in body["records"]] == [f"order-{i}" for i in range(600) if metas[i].partition == p]

    # Docker's health checks agree (etcd's included), and the admin CLI on this host sees every broker.
    wait_for(lambda: all(cluster.health(s) == "healthy" for s in SERVICES), "docker health of every service", 60)
    ps = cluster.ps()
    print(ps)
    assert ps.count("(healthy)") == len(SERVICES), ps
    info = shoal_cli(cluster, "--output", "json", "cluster", "info")
    assert info.returncode == 0, info.stderr
    assert sorted(b["id"] for b in json.loads(info.stdout)["brokers"]) == [1, 2, 3]


def test_kafka_clients_through_the_advertised_listeners(cluster):
    """Each broker's Kafka listener, at the address cluster.yaml advertises, works from this host.

    Runs before the tests that move leaders: the listener's Metadata names the preferred
    leaders (docs/replication.md, "What is left")."""
    from confluent_kafka import Consumer, Producer

    topic = "kafka"
    bootstrap = cluster.kafka_address(2)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    brokers = producer.list_topics(timeout=30).brokers
    assert sorted(f"{b.host}:{b.port}" for b in brokers.values()) == sorted(cluster.kafka_address(i) for i in (1, 2, 3))
    values = [f"k{i}" for i in range(30)]
    for v in values:
        producer.produce(topic, key=v.encode(), value=v.encode())
    assert producer.flush(30) == 0

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "kafka-app", "auto.offset.reset": "earliest"})
    try:
        consumer.subscribe([topic])
        got = poll_messages(consumer, len(values), timeout=60)
    finally:
        consumer.close()
    assert sorted(m.value().decode() for m in got) == sorted(values)


async def test_topic_created_on_the_host_outlives_a_container_restart(cluster):
    """`shoal topic create` replaces cluster.yaml; a broker restarted afterwards must read the new file."""
    created = shoal_cli(cluster, "topic", "create", "payments", "-p", "6")
    assert created.returncode == 0, created.stderr
    epoch = cluster.view()["epoch"]

    container = cluster.broker(1)
    await asyncio.to_thread(container.restart, timeout=5)
    await asyncio.to_thread(cluster.wait_serving, 1, 60)
    topology = cluster.view(1)
    assert topology["epoch"] == epoch and topology["topics"]["payments"]["partitions"] == 6

    def replicated() -> bool:  # the restarted broker mirrors the new topic's states from etcd
        states = cluster.view(1)["partitions"]["payments"]
        return all(s is not None and sorted(s["replicas"]) == [1, 2, 3] for s in states)

    await asyncio.to_thread(wait_for, replicated, "payments replicated on all three brokers", 60)

    async with asyncio.timeout(90), make_producer(cluster) as producer:
        futures = [await producer.send("payments", f"p{p}", partition=p) for p in range(6)]
        assert [m.offset for m in await asyncio.gather(*futures)] == [0] * 6


def committed_offsets(cluster: ComposeCluster, topic: str, group: str, partitions: int) -> dict[int, tuple[int | None, int]]:
    """partition -> (the group's committed offset, high watermark), asked of each leader."""
    owners = cluster.owners(topic)
    out = {}
    for p in range(partitions):
        status, body = http_json("GET", f"{cluster.url(owners[p])}/v1/groups/{group}/topics/{topic}/partitions/{p}/offset")
        assert status == 200, body
        out[p] = (body["offset"], body["high_watermark"])
    return out


def consumed(container) -> list[dict]:
    lines = container.logs(stdout=True, stderr=False).decode().splitlines()
    return [row for row in map(json.loads, lines) if "offset" in row]


async def test_consumer_container_resumes_from_committed_offsets(cluster):
    topic, partitions, group = "billing", 6, "billing-app"

    def start_consumer(name: str):
        return cluster.run(
            name,
            entrypoint=["python", "/opt/e2e/consumer_app.py"],
            command=["--bootstrap", ",".join(cluster.urls), "--topic", topic, "--group", group],
            network_mode="host",  # reaches the brokers where they advertise themselves: 127.0.0.1
            volumes={str(CONSUMER_APP): {"bind": "/opt/e2e/consumer_app.py", "mode": "ro"}},
        )

    def all_committed() -> dict[int, tuple[int | None, int]]:
        offsets = committed_offsets(cluster, topic, group, partitions)
        return offsets if all(c == hw for c, hw in offsets.values()) else {}

    first = [f"first-{i}" for i in range(300)]
    await produce(cluster, topic, first)
    c1 = start_consumer("consumer-1")
    wait_for(lambda: sum(hw for _, hw in all_committed().values()) == 300, "consumer-1 committed everything", 60)
    c1.kill()
    c1.wait(timeout=30)
    assert sorted(r["value"] for r in consumed(c1)) == sorted(first)
    before = all_committed()

    second = [f"second-{i}" for i in range(200)]
    await produce(cluster, topic, second)
    c2 = start_consumer("consumer-2")
    wait_for(lambda: sum(hw for _, hw in all_committed().values()) == 500, "consumer-2 committed everything", 60)
    rows = consumed(c2)
    assert sorted(r["value"] for r in rows) == sorted(second)  # nothing read twice, nothing skipped
    for p in range(partitions):
        offsets = [r["offset"] for r in rows if r["partition"] == p]
        assert offsets == list(range(before[p][0], before[p][0] + len(offsets)))
