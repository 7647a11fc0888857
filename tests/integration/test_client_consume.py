"""AsyncConsumer against a real 3-broker cluster: positions, commits, seeks, resets, long-polls."""

from __future__ import annotations

import asyncio

import pytest

from shoal.client import AsyncConsumer, AsyncProducer, OffsetAndMetadata, TopicPartition
from shoal.client.errors import NoOffsetForPartitionError, OffsetOutOfRange

TP = TopicPartition
TOPICS = {f"c{i}": 3 for i in range(13)}


async def fill(cluster, topic: str, per_partition: int, partitions: int = 3) -> None:
    """``per_partition`` records ``p:i`` in each partition."""
    async with AsyncProducer(cluster.urls, linger_ms=1) as producer:
        for p in range(partitions):
            for i in range(per_partition):
                await producer.send(topic, f"{p}:{i}", partition=p)


async def drain(consumer: AsyncConsumer, count: int, timeout: float = 20) -> list:
    got = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            batch = await consumer.getmany(timeout_ms=1000, max_records=count - len(got))
            for records in batch.values():
                got.extend(records)
    return got


async def test_async_for_reads_every_partition_of_a_topic(cluster):
    await fill(cluster, "c0", 20)
    seen = []
    async with AsyncConsumer("c0", bootstrap=cluster.urls) as consumer:
        assert consumer.assignment() == {TP("c0", p) for p in range(3)}
        async for record in consumer:
            seen.append(record)
            if len(seen) == 60:
                break
        assert await consumer.getmany(timeout_ms=200) == {}
    assert sorted(r.value.decode() for r in seen) == sorted(f"{p}:{i}" for p in range(3) for i in range(20))
    for p in range(3):
        offsets = [r.offset for r in seen if r.partition == p]
        assert offsets == list(range(20))  # in order within a partition


async def test_a_new_consumer_resumes_from_the_committed_offsets(cluster):
    await fill(cluster, "c1", 10)
    async with AsyncConsumer("c1", bootstrap=str(cluster.config_path), group="g1") as first:
        got = await drain(first, 12)
        positions = {tp: await first.position(tp) for tp in first.assignment()}  # every start is known
        await first.commit()
        assert sum(positions.values()) == 12
        for tp, offset in positions.items():
            assert await first.committed(tp) == OffsetAndMetadata(offset, "")
    async with AsyncConsumer("c1", bootstrap=cluster.urls, group="g1") as second:
        assert {tp: await second.position(tp) for tp in second.assignment()} == positions
        rest = await drain(second, 18)
    assert sorted(r.value for r in got + rest) == sorted(f"{p}:{i}".encode() for p in range(3) for i in range(10))


async def test_commit_explicit_offsets_with_metadata(cluster):
    await fill(cluster, "c2", 5, partitions=1)
    async with AsyncConsumer(bootstrap=cluster.urls, group="g2") as consumer:
        consumer.assign([TP("c2", 0)])
        await consumer.commit({TP("c2", 0): OffsetAndMetadata(3, "checkpoint-7")})
        assert await consumer.committed(TP("c2", 0)) == OffsetAndMetadata(3, "checkpoint-7")
        assert await consumer.committed(TP("c2", 1)) is None
        with pytest.raises(OffsetOutOfRange) as info:
            await consumer.commit({TP("c2", 0): 99})
        assert info.value.high_watermark == 5


async def test_seek_position_and_seek_to_beginning_and_end(cluster):
    await fill(cluster, "c3", 10, partitions=1)
    tp = TP("c3", 0)
    async with AsyncConsumer(bootstrap=cluster.urls) as consumer:
        consumer.assign([tp])
        assert await consumer.position(tp) == 0
        await consumer.seek(tp, 7)
        assert await consumer.position(tp) == 7
        assert [r.offset for r in await drain(consumer, 3)] == [7, 8, 9]
        assert await consumer.position(tp) == 10
        await consumer.seek_to_beginning(tp)
        assert [r.offset for r in await drain(consumer, 10)] == list(range(10))
        await consumer.seek_to_end()
        assert await consumer.position(tp) == 10
        async with AsyncProducer(cluster.urls) as producer:
            await producer.send_and_wait("c3", b"new", partition=0)
        (record,) = await drain(consumer, 1)
        assert (record.offset, record.value) == (10, b"new")


async def test_getmany_limits_and_partition_filter(cluster):
    await fill(cluster, "c4", 10)
    async with AsyncConsumer("c4", bootstrap=cluster.urls) as consumer:
        only = await drain_partition(consumer, TP("c4", 1), 10)
        assert {r.partition for r in only} == {1}
        batch = await consumer.getmany(timeout_ms=5000, max_records=4)
        assert sum(len(v) for v in batch.values()) <= 4


async def drain_partition(consumer, tp, count):
    got = []
    async with asyncio.timeout(20):
        while len(got) < count:
            for records in (await consumer.getmany(tp, timeout_ms=1000)).values():
                got.extend(records)
    return got


async def test_latest_starts_at_the_end(cluster):
    await fill(cluster, "c5", 5, partitions=1)
    async with AsyncConsumer(bootstrap=cluster.urls, auto_offset_reset="latest", group="g5") as consumer:
        consumer.assign([TP("c5", 0)])
        assert await consumer.position(TP("c5", 0)) == 5
        async with AsyncProducer(cluster.urls) as producer:
            await producer.send_and_wait("c5", b"after", partition=0)
        (record,) = await drain(consumer, 1)
        assert record.value == b"after"


async def test_none_without_a_committed_offset_raises(cluster):
    async with AsyncConsumer(bootstrap=cluster.urls, auto_offset_reset="none", group="g6") as consumer:
        consumer.assign([TP("c6", 0)])
        with pytest.raises(NoOffsetForPartitionError):
            await consumer.getmany(timeout_ms=5000)
        with pytest.raises(NoOffsetForPartitionError):
            await consumer.position(TP("c6", 0))
        await consumer.seek(TP("c6", 0), 0)  # a seek clears it
        assert await consumer.getmany(timeout_ms=100) == {}


async def test_out_of_range_position_resets_to_earliest(cluster):
    await fill(cluster, "c7", 4, partitions=1)
    async with AsyncConsumer(bootstrap=cluster.urls, auto_offset_reset="earliest") as consumer:
        consumer.assign([TP("c7", 0)])
        await consumer.seek(TP("c7", 0), 1_000)
        assert [r.offset for r in await drain(consumer, 4)] == [0, 1, 2, 3]


async def test_out_of_range_position_raises_with_none(cluster):
    await fill(cluster, "c8", 4, partitions=1)
    async with AsyncConsumer(bootstrap=cluster.urls, auto_offset_reset="none") as consumer:
        consumer.assign([TP("c8", 0)])
        await consumer.seek(TP("c8", 0), 1_000)
        with pytest.raises(OffsetOutOfRange) as info:
            await consumer.getmany(timeout_ms=5000)
        assert (info.value.offset, info.value.high_watermark) == (1000, 4)


async def test_long_poll_returns_a_record_produced_while_waiting(cluster):
    async with AsyncConsumer(bootstrap=cluster.urls, fetch_max_wait_ms=2000) as consumer:
        consumer.assign([TP("c9", 0)])
        assert await consumer.position(TP("c9", 0)) == 0
        waiting = asyncio.create_task(consumer.getmany(timeout_ms=15_000))
        async with AsyncProducer(cluster.urls) as producer:
            await producer.send_and_wait("c9", b"wake", partition=0)
        got = await asyncio.wait_for(waiting, 15)
        assert [r.value for r in got[TP("c9", 0)]] == [b"wake"]


async def test_auto_commit_commits_on_close(cluster):
    """close() auto-commits what earlier reads returned, not what the latest one did."""
    await fill(cluster, "c10", 3, partitions=1)
    async with AsyncConsumer(bootstrap=cluster.urls, group="g10", enable_auto_commit=True) as consumer:
        consumer.assign([TP("c10", 0)])
        await drain(consumer, 3)
        assert await consumer.getmany(timeout_ms=0) == {}  # a read: the application is done with the 3
    async with AsyncConsumer(bootstrap=cluster.urls, group="g10", enable_auto_commit=True) as again:
        assert await again.committed(TP("c10", 0)) == OffsetAndMetadata(3, "")
        await fill(cluster, "c10", 2, partitions=1)
        again.assign([TP("c10", 0)])
        assert [r.offset for r in await drain(again, 2)] == [3, 4]  # handed out, not read past
    async with AsyncConsumer(bootstrap=cluster.urls, group="g10", enable_auto_commit=True) as third:
        assert await third.committed(TP("c10", 0)) == OffsetAndMetadata(3, "")
        third.assign([TP("c10", 0)])
        assert [r.offset for r in await drain(third, 2)] == [3, 4]
        await third.commit()  # processed: an explicit commit covers the latest read
    async with AsyncConsumer(bootstrap=cluster.urls, group="g10") as fourth:
        assert await fourth.committed(TP("c10", 0)) == OffsetAndMetadata(5, "")  # close() did not take it back


async def test_assign_replaces_the_assignment_and_keeps_positions(cluster):
    await fill(cluster, "c11", 5)
    async with AsyncConsumer(bootstrap=cluster.urls) as consumer:
        consumer.assign([TP("c11", 0)])
        await drain(consumer, 5)
        consumer.assign([TP("c11", 0), TP("c11", 2)])
        got = await drain(consumer, 5)
        assert {r.partition for r in got} == {2}
        assert await consumer.position(TP("c11", 0)) == 5
        with pytest.raises(ValueError, match="not assigned"):
            await consumer.position(TP("c11", 1))
    with pytest.raises(ValueError, match="constructed with"):
        AsyncConsumer("c11", bootstrap=cluster.urls).assign([TP("c11", 0)])


async def test_getmany_with_max_records_takes_the_partitions_in_turn(cluster):
    """max_records=1 over three partitions with records buffered serves each in turn, starving none."""
    await fill(cluster, "c12", 20)
    async with AsyncConsumer("c12", bootstrap=cluster.urls) as consumer:
        for p in range(3):  # each partition's first fetch has arrived: all three have records buffered
            assert len((await consumer.getmany(TP("c12", p), timeout_ms=10_000, max_records=1))[TP("c12", p)]) == 1
        order = []
        for _ in range(12):
            (tp,) = await consumer.getmany(max_records=1)
            order.append(tp.partition)
        assert sorted(order[:3]) == [0, 1, 2] and order[3:] == order[:3] * 3
        record = await consumer.getone()
        assert record.partition == order[0]  # getone() rotates as well
