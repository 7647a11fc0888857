"""The bulk client calls against a real 3-broker cluster: AsyncProducer.send_batch() and
AsyncConsumer.getbatches(); and send()'s fast path for keyless records."""

from __future__ import annotations

import asyncio

import pytest

from shoal.client import AsyncConsumer, AsyncProducer, RecordMetadata, TopicPartition
from shoal.client.errors import BatchTooLarge, ProducerClosedError, UnknownPartition, UnknownTopic
from shoal.client.partitioner import partition_for_key
from shoal.client.records import RecordBatch
from tests.client.helpers import all_partitions, read_exactly

TP = TopicPartition
TOPICS = {"b0": 3, "b1": 2, "sticky": 6, "keyed": 12, "one": 1, "mixed": 2, "misc": 3, "closing": 1}


async def test_getbatches_reads_what_getmany_would_and_moves_positions(cluster):
    async with AsyncProducer(cluster.urls, linger_ms=1) as producer:
        for p in range(3):
            for i in range(300):
                await producer.send("b0", b"%d:%d" % (p, i), partition=p, headers={"i": b"%d" % i} if i % 2 else None)
    async with AsyncConsumer(bootstrap=cluster.urls, group="g-bulk", fetch_max_wait_ms=100) as consumer:
        consumer.assign([TP("b0", p) for p in range(3)])
        got: dict[TopicPartition, list] = {TP("b0", p): [] for p in range(3)}
        async with asyncio.timeout(20):
            while sum(map(len, got.values())) < 900:
                for tp, batch in (await consumer.getbatches(timeout_ms=1000, max_records=250)).items():
                    assert isinstance(batch, RecordBatch) and len(batch) <= 250
                    assert batch.values == [r.value for r in batch]
                    got[tp].extend(batch)
        for p in range(3):
            records = got[TP("b0", p)]
            assert [r.offset for r in records] == list(range(300))
            assert [r.value for r in records] == [b"%d:%d" % (p, i) for i in range(300)]
            assert [r.headers for r in records[:2]] == [{}, {"i": b"1"}]
            assert await consumer.position(TP("b0", p)) == 300
        await consumer.commit()
        assert (await consumer.committed(TP("b0", 1))).offset == 300


async def test_getmany_and_getbatches_interleave_without_losing_records(cluster):
    async with AsyncProducer(cluster.urls, linger_ms=1) as producer:
        for i in range(500):
            await producer.send("b1", b"%d" % i, partition=0)
    async with AsyncConsumer(bootstrap=cluster.urls, fetch_max_wait_ms=100) as consumer:
        consumer.assign([TP("b1", 0)])
        seen: list[int] = []
        async with asyncio.timeout(20):
            while len(seen) < 500:
                if len(seen) % 2:
                    batches = await consumer.getbatches(timeout_ms=1000, max_records=37)
                    seen.extend(o for b in batches.values() for o in b.offsets)
                else:
                    lists = await consumer.getmany(timeout_ms=1000, max_records=41)
                    seen.extend(r.offset for records in lists.values() for r in records)
        assert seen == list(range(500))
        assert await consumer.getbatches(timeout_ms=200) == {}


async def test_send_batch_keyless_records_stick_to_a_partition_per_batch_and_come_back_in_order(cluster):
    values = [b"%05d" % i for i in range(3000)]
    async with AsyncProducer(cluster.urls, max_batch_bytes=8192, partitioner_seed=3) as producer:
        futures = [await producer.send_batch("sticky", values[i : i + 700]) for i in range(0, 3000, 700)]
        metas = [m for f in futures for m in await f]
    assert len(metas) == 3000
    by_partition: dict[int, list] = {}
    for value, meta in zip(values, metas):
        by_partition.setdefault(meta.partition, []).append((meta.offset, value))
    assert len(by_partition) > 1  # batches of ~8 KiB moved the sticky partition on
    got = await read_exactly(cluster.urls, all_partitions("sticky", 6), 3000)
    stored = {(r.partition, r.offset): r.value for r in got}
    for p, pairs in by_partition.items():
        assert [stored[(p, o)] for o, _ in pairs] == [v for _, v in pairs]
        assert [o for o, _ in pairs] == sorted(o for o, _ in pairs)


async def test_send_batch_with_keys_routes_like_send(cluster):
    keys = [f"user-{i % 40}".encode() for i in range(400)]
    values = [b"%d" % i for i in range(400)]
    async with AsyncProducer(cluster.urls, linger_ms=2) as producer:
        metas = await (await producer.send_batch("keyed", values, keys=keys))
    assert [m.partition for m in metas] == [partition_for_key(k, 12) for k in keys]
    got = await read_exactly(cluster.urls, all_partitions("keyed", 12), 400)
    assert {(r.partition, r.offset): (r.key, r.value) for r in got} == {
        (m.partition, m.offset): (k, v) for m, k, v in zip(metas, keys, values)
    }


async def test_send_batch_explicit_partition_str_values_tombstones_and_timestamp(cluster):
    async with AsyncProducer(cluster.urls, linger_ms=1) as producer:
        fut = await producer.send_batch(
            "misc", ["text", None, b"raw", bytearray(b"ba")], keys=[None, "k", None, None],
            partition=2, timestamp_ms=1_700_000_000_042,
        )  # fmt: skip
        metas = await fut
    assert [m.partition for m in metas] == [2] * 4
    assert [m.offset for m in metas] == list(range(metas[0].offset, metas[0].offset + 4))
    got = await read_exactly(cluster.urls, [TP("misc", 2)], 4)
    assert [(r.key, r.value, r.timestamp) for r in got[-4:]] == [
        (None, b"text", 1_700_000_000_042), (b"k", None, 1_700_000_000_042),
        (None, b"raw", 1_700_000_000_042), (None, b"ba", 1_700_000_000_042),
    ]  # fmt: skip


async def test_send_batch_and_send_keep_one_order_in_a_partition(cluster):
    async with AsyncProducer(cluster.urls, max_batch_bytes=4096, linger_ms=1) as producer:
        expected = []
        for round_ in range(20):
            one = b"s%d" % round_
            await producer.send("one", one)
            many = [b"b%d-%d" % (round_, i) for i in range(round_ * 7)]
            await producer.send_batch("one", many)
            expected += [one, *many]
        await producer.flush()
    got = await read_exactly(cluster.urls, [TP("one", 0)], len(expected))
    assert [r.value for r in got] == expected


async def test_send_batch_refuses_bad_input_before_queueing_anything(cluster):
    async with AsyncProducer(cluster.urls, buffer_memory=64 * 1024, max_batch_bytes=16 * 1024) as producer:
        with pytest.raises(ValueError, match="2 keys for 3 values"):
            await producer.send_batch("misc", [b"a", b"b", b"c"], keys=[b"k", b"k"])
        with pytest.raises(ValueError, match="buffer_memory"):
            await producer.send_batch("misc", [b"x" * 1000] * 100)
        with pytest.raises(BatchTooLarge):
            await producer.send_batch("misc", [b"small", b"x" * 20_000])
        with pytest.raises(UnknownPartition):
            await producer.send_batch("misc", [b"a"], partition=3)
        with pytest.raises(UnknownTopic):
            await producer.send_batch("no-such-topic", [b"a"])
        with pytest.raises(TypeError):
            await producer.send_batch("misc", [b"a", 5])
        with pytest.raises(TypeError):
            await producer.send_batch("misc", [b"a"], timestamp_ms=1.5)
        for bad in (-1, 2**63):
            with pytest.raises(ValueError, match="timestamp_ms"):
                await producer.send_batch("misc", [b"a"], timestamp_ms=bad)
            with pytest.raises(ValueError, match="timestamp_ms"):
                await producer.send("misc", b"a", timestamp_ms=bad)
        assert producer._acc.buffered == 0
        assert await (await producer.send_batch("misc", [])) == []


async def test_keyless_fast_path_and_keyed_sends_interleave_in_order(cluster):
    """Keyless records (fast path) and explicit-partition ones share partition batches in send order."""
    async with AsyncProducer(cluster.urls, max_batch_bytes=2048, linger_ms=1, partitioner_seed=1) as producer:
        futures = []
        for i in range(600):
            if i % 3:
                futures.append(await producer.send("mixed", b"%d" % i))
            else:
                futures.append(await producer.send("mixed", b"%d" % i, partition=i % 2))
        metas: list[RecordMetadata] = list(await asyncio.gather(*futures))
    got = await read_exactly(cluster.urls, all_partitions("mixed", 2), 600)
    stored = {(r.partition, r.offset): r.value for r in got}
    assert [stored[(m.partition, m.offset)] for m in metas] == [b"%d" % i for i in range(600)]
    for p in range(2):
        sent_order = [int(stored[(m.partition, m.offset)]) for m in metas if m.partition == p]
        assert sent_order == sorted(sent_order)


async def test_send_after_close_raises_even_with_an_open_keyless_batch(cluster):
    producer = AsyncProducer(cluster.urls, linger_ms=60_000)
    await producer.send("closing", b"first")  # leaves an open batch for the fast path
    close = asyncio.ensure_future(producer.close())
    await asyncio.sleep(0)
    with pytest.raises(ProducerClosedError):
        await producer.send("closing", b"late")
    with pytest.raises(ProducerClosedError):
        await producer.send_batch("closing", [b"late"])
    await close
    got = await read_exactly(cluster.urls, [TP("closing", 0)], 1)
    assert [r.value for r in got] == [b"first"]
