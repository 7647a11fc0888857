"""Real Kafka clients against a real 3-broker cluster: produce, consume as a group, commit.

Each client's committed offsets are read back through shoal's HTTP API: one namespace.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka import Consumer as CKConsumer
from confluent_kafka import Producer as CKProducer
from confluent_kafka import TopicPartition as CKTopicPartition
from confluent_kafka.admin import AdminClient
from kafka import KafkaConsumer, KafkaProducer

from tests.harness import http_json
from tests.kafka.helpers import poll_messages

N = 60


def committed_over_http(cluster, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    out = {}
    for p in range(partitions):
        status, body = http_json("GET", f"{cluster.urls[0]}/v1/groups/{group}/topics/{topic}/partitions/{p}/offset")
        if status == 421:  # not the owner: ask the owner
            status, body = http_json("GET", f"{body['owner_url']}/v1/groups/{group}/topics/{topic}/partitions/{p}/offset")
        assert status == 200, body
        out[p] = body["offset"]
    return out


def all_values(cluster, topic: str, partitions: int) -> list[bytes]:
    values = []
    for p in range(partitions):
        owner = cluster.owner(topic, p)
        status, body = http_json("GET", f"{cluster.url(owner)}/v1/topics/{topic}/partitions/{p}/records?offset=0")
        assert status == 200, body
        values += [r["value"] for r in body["records"]]
    return values


def test_confluent_kafka_produces_consumes_as_a_group_and_commits(cluster):
    producer = CKProducer({"bootstrap.servers": cluster.bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for i in range(N):
        producer.produce("confluent", key=f"k{i}".encode(), value=f"v{i}".encode(), headers=[("h", b"x")])
    assert producer.flush(20) == 0
    consumer = CKConsumer({
        "bootstrap.servers": cluster.bootstrap, "group.id": "ck-group",
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
    })
    consumer.subscribe(["confluent"])
    got = poll_messages(consumer, N)
    consumer.commit(asynchronous=False)
    committed = consumer.committed([CKTopicPartition("confluent", p) for p in range(3)], timeout=10)
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    listed = admin.list_consumer_groups().result(timeout=20)
    assert "ck-group" in {g.group_id for g in listed.valid}
    described = admin.describe_consumer_groups(["ck-group"])["ck-group"].result(timeout=20)
    assert described.state.name == "STABLE" and len(described.members) == 1
    assert {tp.partition for tp in described.members[0].assignment.topic_partitions} == {0, 1, 2}
    by_time = consumer.offsets_for_times([CKTopicPartition("confluent", p, 0) for p in range(3)], timeout=10)
    assert [tp.offset for tp in by_time] == [0, 0, 0]
    consumer.close()
    assert sorted(m.value() for m in got) == sorted(f"v{i}".encode() for i in range(N))
    assert all(m.headers() == [("h", b"x")] for m in got)
    ends = {p: sum(1 for m in got if m.partition() == p) for p in range(3)}
    assert {tp.partition: tp.offset for tp in committed} == ends
    assert committed_over_http(cluster, "ck-group", "confluent", 3) == {p: n or None for p, n in ends.items()}


def test_two_confluent_consumers_split_a_group_s_partitions(cluster):
    config = {"bootstrap.servers": cluster.bootstrap, "group.id": "pair", "auto.offset.reset": "earliest",
              "heartbeat.interval.ms": 200, "enable.auto.commit": False}
    consumers = [CKConsumer(config), CKConsumer(config)]
    for c in consumers:
        c.subscribe(["shared"])
    got: dict[int, list] = {0: [], 1: []}

    def poll_both() -> list[set[int]]:
        for i, c in enumerate(consumers):
            msg = c.poll(0.1)
            if msg is not None:
                assert msg.error() is None, msg.error()
                got[i].append(msg)
        return [{tp.partition for tp in c.assignment()} for c in consumers]

    deadline = time.monotonic() + 60
    while not all(owned := poll_both()) and time.monotonic() < deadline:
        pass  # until the rebalance gave each member its share
    assert owned[0] | owned[1] == {0, 1, 2, 3} and not owned[0] & owned[1]
    producer = CKProducer({"bootstrap.servers": cluster.bootstrap})
    for i in range(N):
        producer.produce("shared", value=f"v{i}".encode(), partition=i % 4)
    assert producer.flush(20) == 0
    while len(got[0]) + len(got[1]) < N and time.monotonic() < deadline:
        assert poll_both() == owned  # no further rebalance
    for c in consumers:
        c.close()
    assert sorted(m.value() for m in got[0] + got[1]) == sorted(f"v{i}".encode() for i in range(N))
    assert {m.partition() for m in got[0]} == owned[0] and {m.partition() for m in got[1]} == owned[1]


def test_kafka_python_produces_consumes_as_a_group_and_commits(cluster):
    producer = KafkaProducer(bootstrap_servers=cluster.bootstrap.split(","), acks="all")
    for i in range(N):
        producer.send("kpython", key=f"k{i}".encode(), value=f"v{i}".encode())
    producer.flush(20)
    producer.close()
    consumer = KafkaConsumer(
        "kpython", bootstrap_servers=cluster.bootstrap.split(","), group_id="kp-group",
        auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=20000,
    )
    got = []
    for msg in consumer:
        got.append(msg)
        if len(got) == N:
            break
    consumer.commit()
    consumer.close()
    assert sorted(m.value for m in got) == sorted(f"v{i}".encode() for i in range(N))
    ends = {p: sum(1 for m in got if m.partition == p) for p in range(3)}
    assert committed_over_http(cluster, "kp-group", "kpython", 3) == {p: n or None for p, n in ends.items()}


async def test_aiokafka_produces_consumes_as_a_group_and_commits(cluster):
    producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        batch = [producer.send("aio", key=f"k{i}".encode(), value=f"v{i}".encode()) for i in range(N)]
        await asyncio.gather(*[await f for f in batch])
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        "aio", bootstrap_servers=cluster.bootstrap, group_id="aio-group",
        auto_offset_reset="earliest", enable_auto_commit=False,
    )
    await consumer.start()
    got = []
    try:
        async with asyncio.timeout(60):
            async for msg in consumer:
                got.append(msg)
                if len(got) == N:
                    break
        await consumer.commit()
    finally:
        await consumer.stop()
    assert sorted(m.value for m in got) == sorted(f"v{i}".encode() for i in range(N))
    ends = {p: sum(1 for m in got if m.partition == p) for p in range(3)}
    assert committed_over_http(cluster, "aio-group", "aio", 3) == {p: n or None for p, n in ends.items()}


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed (.ci/run installs it)")
def test_kcat_produces_and_consumes_as_a_group(cluster):
    lines = "".join(f"k{i}:v{i}\n" for i in range(N))
    subprocess.run(["kcat", "-b", cluster.bootstrap, "-P", "-t", "kcat", "-K:"], input=lines.encode(), check=True, timeout=60)
    assert sorted(all_values(cluster, "kcat", 3)) == sorted(f"v{i}" for i in range(N))
    out = subprocess.run(
        ["kcat", "-b", cluster.bootstrap, "-G", "kcat-group", "-o", "beginning", "-e", "-f", "%k=%s\n", "kcat"],
        capture_output=True, check=True, timeout=60,
    )
    assert sorted(out.stdout.decode().split()) == sorted(f"k{i}=v{i}" for i in range(N))
    committed = committed_over_http(cluster, "kcat-group", "kcat", 3)
    assert sum(v or 0 for v in committed.values()) == N
