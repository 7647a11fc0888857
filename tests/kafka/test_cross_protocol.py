"""Records cross protocols: shoal's client reads what Kafka clients wrote and the other way,
compressed batches included; librdkafka's murmur2 placement matches shoal's client."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer as CKConsumer
from confluent_kafka import Producer as CKProducer
from confluent_kafka import TopicPartition as CKTopicPartition

from shoal.client import AsyncConsumer, AsyncProducer, TopicPartition
from shoal.client.partitioner import partition_for_key
from tests.kafka.helpers import poll_messages



def kafka_read(cluster, topic: str, n: int, partition: int = 0) -> list:
    consumer = CKConsumer({"bootstrap.servers": cluster.bootstrap, "group.id": f"read-{topic}", "enable.auto.commit": False})
    consumer.assign([CKTopicPartition(topic, partition, 0)])
    got = poll_messages(consumer, n, 30)
    consumer.close()
    return got


async def shoal_read(cluster, topic: str, n: int) -> list:
    async with AsyncConsumer(bootstrap=cluster.urls, fetch_max_wait_ms=100) as consumer:
        consumer.assign([TopicPartition(topic, 0)])
        got = []
        deadline = time.monotonic() + 30
        while len(got) < n and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                got.extend(records)
    return got


async def test_a_kafka_consumer_reads_what_shoal_s_client_wrote(cluster):
    async with AsyncProducer(bootstrap=cluster.urls) as producer:
        for i in range(50):
            await producer.send("from-shoal", f"v{i}".encode(), key=f"k{i}".encode(), partition=0,
                                headers={"n": str(i).encode()}, timestamp_ms=1_700_000_000_000 + i)
        await producer.flush()
    got = kafka_read(cluster, "from-shoal", 50)
    assert [(m.offset(), m.key(), m.value()) for m in got] == [(i, f"k{i}".encode(), f"v{i}".encode()) for i in range(50)]
    assert [m.headers() for m in got] == [[("n", str(i).encode())] for i in range(50)]
    assert [m.timestamp()[1] for m in got] == [1_700_000_000_000 + i for i in range(50)]


async def test_shoal_s_client_reads_what_a_kafka_producer_wrote(cluster):
    producer = CKProducer({"bootstrap.servers": cluster.bootstrap})
    for i in range(50):
        producer.produce("from-kafka", key=f"k{i}".encode() if i % 2 else None, value=f"v{i}".encode(),
                         partition=0, headers=[("n", str(i).encode())], timestamp=1_700_000_000_000 + i)
    assert producer.flush(20) == 0
    got = await shoal_read(cluster, "from-kafka", 50)
    assert [(r.offset, r.key, r.value) for r in got] == [
        (i, f"k{i}".encode() if i % 2 else None, f"v{i}".encode()) for i in range(50)
    ]
    assert [r.headers for r in got] == [{"n": str(i).encode()} for i in range(50)]
    assert [r.timestamp for r in got] == [1_700_000_000_000 + i for i in range(50)]


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
async def test_compressed_batches_from_confluent_kafka_are_read_by_both_sides(cluster, codec):
    producer = CKProducer({"bootstrap.servers": cluster.bootstrap, "compression.type": codec, "linger.ms": 50})
    values = [(f"{codec}-{i}-" + "x" * 200).encode() for i in range(200)]
    for v in values:
        producer.produce(codec, value=v, partition=0)
    assert producer.flush(20) == 0
    assert [r.value for r in await shoal_read(cluster, codec, 200)] == values
    assert [m.value() for m in kafka_read(cluster, codec, 200)] == values


def test_librdkafka_murmur2_places_keys_where_shoal_s_client_does(cluster):
    producer = CKProducer({"bootstrap.servers": cluster.bootstrap, "partitioner": "murmur2_random"})
    placed = {}

    def report(err, msg):
        assert err is None, err
        placed[msg.key()] = msg.partition()

    keys = [f"key-{i}".encode() for i in range(200)]
    for key in keys:
        producer.produce("keys", key=key, value=b"v", on_delivery=report)
    assert producer.flush(20) == 0
    assert placed == {key: partition_for_key(key, 7) for key in keys}
