"""The bulk client calls against a real 3-broker cluster: AsyncConsumer.getbatches()."""

from __future__ import annotations

import asyncio

import pytest

from shoal.client import AsyncConsumer, AsyncProducer, TopicPartition
from shoal.client.records import RecordBatch
from tests.harness import LocalCluster

TP = TopicPartition


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = LocalCluster(tmp_path_factory.mktemp("bulk"), 3, {"b0": 3, "b1": 2})
    cluster.start()
    yield cluster
    cluster.stop()


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
