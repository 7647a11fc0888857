"""Typed errors the client raises against a real cluster, and the stale-topology recovery."""

from __future__ import annotations

import asyncio

import msgpack
import pytest

from shoal.client import AsyncConsumer, AsyncProducer, TopicPartition
from shoal.client.errors import (
    BrokerUnreachable,
    CorruptRecordError,
    InvalidRequest,
    OffsetOutOfRange,
    UnknownPartition,
    UnknownTopic,
)
from shoal.client.records import frame_records
from tests.harness import http_json


async def test_unknown_topic(cluster_factory):
    cluster = cluster_factory(1, {"t": 2})
    async with AsyncProducer(cluster.urls) as producer:
        with pytest.raises(UnknownTopic) as info:
            await producer.send("nope", b"x")
        assert info.value.topic == "nope"
        with pytest.raises(InvalidRequest) as bad:
            await producer.send("no/pe", b"x")
        assert bad.value.field == "topic"
    with pytest.raises(UnknownTopic):
        async with AsyncConsumer("nope", bootstrap=cluster.urls):
            pass
    async with AsyncConsumer(bootstrap=cluster.urls) as consumer:
        consumer.assign([TopicPartition("nope", 0)])
        with pytest.raises(UnknownTopic):
            await consumer.getmany(timeout_ms=5000)


async def test_unknown_partition(cluster_factory):
    cluster = cluster_factory(1, {"t": 2})
    async with AsyncProducer(cluster.urls) as producer:
        with pytest.raises(UnknownPartition) as info:
            await producer.send("t", b"x", partition=2)
        assert (info.value.partition, info.value.partitions) == (2, 2)
    async with AsyncConsumer(bootstrap=cluster.urls) as consumer:
        consumer.assign([TopicPartition("t", 5)])
        with pytest.raises(UnknownPartition):
            await consumer.getmany(timeout_ms=5000)


async def test_out_of_range_offset(cluster_factory):
    cluster = cluster_factory(1, {"t": 1})
    async with AsyncProducer(cluster.urls) as producer:
        await producer.send_and_wait("t", b"only")
    async with AsyncConsumer(bootstrap=cluster.urls, auto_offset_reset="none", group="g") as consumer:
        consumer.assign([TopicPartition("t", 0)])
        await consumer.seek(TopicPartition("t", 0), 42)
        with pytest.raises(OffsetOutOfRange) as info:
            await consumer.getmany(timeout_ms=5000)
        assert (info.value.offset, info.value.log_start_offset, info.value.high_watermark) == (42, 0, 1)
        with pytest.raises(OffsetOutOfRange):
            await consumer.commit({TopicPartition("t", 0): 42})


async def test_start_fails_while_no_broker_answers_and_works_once_one_does(cluster_factory):
    cluster = cluster_factory(1, {"t": 1}, start=False)
    producer = AsyncProducer(cluster.urls)
    consumer = AsyncConsumer("t", bootstrap=cluster.urls)
    with pytest.raises(BrokerUnreachable):
        await producer.start()
    with pytest.raises(BrokerUnreachable):
        await consumer.start()
    await asyncio.to_thread(cluster.start)
    try:
        meta = await producer.send_and_wait("t", b"x")
        got = await consumer.getmany(timeout_ms=10_000)
        assert [r.offset for r in got[TopicPartition("t", 0)]] == [meta.offset]
    finally:
        await producer.close()
        await consumer.close()


def _put_topology(cluster, broker_ids, epoch, members):
    _, body = http_json("GET", cluster.url(broker_ids[0]) + "/v1/cluster")
    body["epoch"] = epoch
    body["brokers"] = [b for b in body["brokers"] if b["id"] in members]
    for broker_id in broker_ids:
        status, answer = http_json("PUT", cluster.url(broker_id) + "/v1/cluster", body)
        assert status == 200, answer


async def test_a_misrouted_partition_refreshes_the_topology_and_succeeds(cluster_factory, caplog):
    """A producer and a consumer holding an old epoch hit NOT_OWNER, refresh, and carry on."""
    cluster = cluster_factory(4, {"t": 12})
    # Epoch 2 leaves broker 4 out; the clients learn it ...
    _put_topology(cluster, [1, 2, 3], 2, {1, 2, 3})
    producer = AsyncProducer(cluster.url(1))
    consumer = AsyncConsumer(bootstrap=cluster.url(1), fetch_max_wait_ms=100)
    await producer.start()
    await consumer.start()
    # ... then epoch 3 brings broker 4 back, and with it the partitions it ranks first.
    _put_topology(cluster, [4, 1, 2, 3], 3, {1, 2, 3, 4})
    moved = [p for p in range(12) if cluster.owner("t", p) == 4]
    assert moved
    p = moved[0]
    caplog.set_level("WARNING", logger="shoal.client")
    try:
        meta = await producer.send_and_wait("t", b"found it", partition=p)
        assert any("NOT_OWNER" in r.getMessage() for r in caplog.records)
        consumer.assign([TopicPartition("t", p)])
        got = await consumer.getmany(timeout_ms=10_000)
        assert [r.value for r in got[TopicPartition("t", p)]] == [b"found it"]
        assert got[TopicPartition("t", p)][0].offset == meta.offset
    finally:
        await producer.close()
        await consumer.close()
    _, on_four = http_json("GET", f"{cluster.url(4)}/v1/topics/t/partitions/{p}/offsets")
    assert on_four["high_watermark"] == 1  # it went to the real owner


async def test_bad_arguments_to_send_raise_at_once_and_harm_nothing(cluster_factory):
    cluster = cluster_factory(1, {"t": 1})
    async with AsyncProducer(cluster.urls) as producer:
        for kwargs, message in [
            ({"value": 42}, "value must be bytes or str"),
            ({"value": b"v", "key": 1.5}, "key must be bytes or str"),
            ({"value": b"v", "timestamp_ms": 1.7e12}, "timestamp_ms must be an int"),
            ({"value": b"v", "headers": {1: b"x"}}, "header names must be str"),
            ({"value": b"v", "headers": {"h": 3}}, "header 'h' must be bytes or str"),
        ]:
            with pytest.raises(TypeError, match=message):
                await producer.send("t", **kwargs)
        with pytest.raises(ValueError, match="linger_ms"):
            AsyncProducer(cluster.urls, linger_ms=-1)
        assert (await producer.send_and_wait("t", b"fine")).offset == 0


async def test_an_undecodable_record_is_named_and_can_be_sought_past(cluster_factory):
    """A stored frame whose records do not decode (written straight into the segment file)
    gives CorruptRecordError naming topic, partition and offset, after the records before
    it; seek() to its next_offset reads on."""
    cluster = cluster_factory(1, {"t": 1})
    async with AsyncProducer(cluster.urls) as producer:
        for value in (b"r0", b"r1", b"r2"):
            await producer.send_and_wait("t", value)
    assert cluster.terminate(1) == 0
    poison = frame_records(msgpack.packb([7]), record_count=1, first_timestamp=1, max_timestamp=1, base_offset=3)
    with (cluster.root / "broker-1" / "t-0" / f"{0:020d}.log").open("ab") as segment:
        segment.write(poison)  # a whole frame with a good CRC: recovery keeps it
    cluster.start(1)
    async with AsyncProducer(cluster.urls) as producer:
        assert (await producer.send_and_wait("t", b"r4")).offset == 4
    tp = TopicPartition("t", 0)
    async with AsyncConsumer(bootstrap=cluster.urls) as consumer:
        consumer.assign([tp])
        got = await consumer.getmany(timeout_ms=5000)
        assert [r.value for r in got[tp]] == [b"r0", b"r1", b"r2"]
        for _ in range(2):  # raised until the application moves on
            with pytest.raises(CorruptRecordError) as info:
                await consumer.getmany(timeout_ms=5000)
        err = info.value
        assert (err.topic, err.partition, err.offset, err.next_offset) == ("t", 0, 3, 4)
        assert "t/0" in str(err) and "offset 3" in str(err)
        await consumer.seek(tp, err.next_offset)
        got = await consumer.getmany(timeout_ms=5000)
        assert [(r.offset, r.value) for r in got[tp]] == [(4, b"r4")]
