"""AsyncProducer against a real 3-broker cluster: routing, ordering, batching, exactly-once reads."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest

from shoal.client import AsyncProducer, RecordMetadata, TopicPartition
from shoal.client.partitioner import partition_for_key
from tests.client.helpers import all_partitions, read_exactly

TOPICS = {"keyed": 12, "keyed-bytes": 12, "bulk": 12, "misc": 3, "sticky": 6, "one": 1}


@pytest.mark.parametrize("topic, convert", [("keyed", str), ("keyed-bytes", str.encode)], ids=["str", "bytes"])
async def test_keyed_records_land_on_the_murmur2_partition_in_order(cluster, topic, convert):
    """Each key's records go to partition_for_key(key, 12) and are read back in send order
    (bytes keys and values take send()'s fast path once their partition has an open batch)."""
    keys = [f"user-{i}" for i in range(40)]
    async with AsyncProducer(cluster.urls, linger_ms=2) as producer:
        futures = [
            (key, n, await producer.send(topic, convert(f"{key}:{n}"), key=convert(key)))
            for n in range(50)
            for key in keys
        ]
        metas = await asyncio.gather(*(f for _, _, f in futures))
    for (key, _, _), meta in zip(futures, metas):
        assert meta.partition == partition_for_key(key.encode(), 12)
    records = await read_exactly(cluster.urls, all_partitions(topic, 12), len(futures))
    assert len(records) == len(futures)
    by_key = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        key, n = record.value.decode().split(":")
        assert record.key == key.encode()
        by_key[key].append(int(n))
    assert by_key == {key: list(range(50)) for key in keys}
    # The acknowledged offsets are where the records really are.
    stored = {(r.partition, r.offset): r.value for r in records}
    for (key, n, _), meta in zip(futures, metas):
        assert stored[(meta.partition, meta.offset)] == f"{key}:{n}".encode()


async def test_100k_records_with_linger_are_read_exactly_once(cluster):
    """100,000 keyless records, batched by linger: every one read back once, none extra."""
    n = 100_000
    async with AsyncProducer(cluster.urls, linger_ms=20, max_batch_bytes=64 << 10) as producer:
        futures = [await producer.send("bulk", b"%d" % i) for i in range(n)]
        await producer.flush()
        metas = [f.result() for f in futures]
    assert len({(m.partition, m.offset) for m in metas}) == n
    partitions_used = {m.partition for m in metas}
    assert len(partitions_used) > 1  # the sticky partitioner moved on between batches
    records = await read_exactly(cluster.urls, all_partitions("bulk", 12), n, timeout=60)
    assert len(records) == n
    assert sorted(int(r.value) for r in records) == list(range(n))
    where = {(r.partition, r.offset): int(r.value) for r in records}
    assert all(where[(m.partition, m.offset)] == i for i, m in enumerate(metas))


async def test_explicit_partition_headers_timestamps_and_str_values(cluster):
    async with AsyncProducer(cluster.urls) as producer:
        meta = await producer.send_and_wait(
            "misc", "héllo", key="k", partition=2, headers={"trace": "abc", "raw": b"\x00\xff"},
            timestamp_ms=1_700_000_000_123,
        )
        tombstone = await producer.send_and_wait("misc", None, key=b"k", partition=2)
    assert isinstance(meta, RecordMetadata) and meta.topic == "misc" and meta.partition == 2
    assert tombstone.offset == meta.offset + 1
    records = await read_exactly(cluster.urls, [TopicPartition("misc", 2)], 2)
    first, second = sorted(records, key=lambda r: r.offset)
    assert first.value == "héllo".encode() and first.key == b"k"
    assert first.headers == {"trace": b"abc", "raw": b"\x00\xff"}
    assert first.timestamp == 1_700_000_000_123
    assert second.value is None and second.key == b"k"


async def test_records_of_one_partition_keep_send_order_across_many_batches(cluster):
    """Small batches, several in flight per broker: the partition's log is in send order."""
    n = 5000
    async with AsyncProducer(cluster.urls, linger_ms=0, max_batch_bytes=2048, max_in_flight_per_broker=5) as producer:
        futures = [await producer.send("one", b"%d" % i) for i in range(n)]
        metas = await asyncio.gather(*futures)
    assert [m.offset for m in metas] == list(range(n))
    records = await read_exactly(cluster.urls, [TopicPartition("one", 0)], n)
    assert [int(r.value) for r in sorted(records, key=lambda r: r.offset)] == list(range(n))


async def test_keyless_records_stick_to_a_partition_per_batch(cluster):
    """The sticky partitioner fills one batch before it moves on (no round-robin spray)."""
    async with AsyncProducer(cluster.urls, linger_ms=50, partitioner_seed=7) as producer:
        futures = [await producer.send("sticky", b"x") for _ in range(100)]
        metas = await asyncio.gather(*futures)
    # All 100 were queued before the linger ran out: one open batch took them all.
    assert len({m.partition for m in metas}) == 1


async def test_flush_and_close_deliver_everything_queued(cluster):
    producer = AsyncProducer(cluster.urls, linger_ms=60_000)
    futures = [await producer.send("misc", b"late", partition=0) for _ in range(10)]
    assert not any(f.done() for f in futures)
    await producer.close()  # a linger of a minute must not delay close
    assert all(f.done() and f.exception() is None for f in futures)
    await producer.close()  # idempotent
