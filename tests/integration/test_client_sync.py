"""The blocking Producer and Consumer wrappers against a real broker."""

from __future__ import annotations

import threading

import pytest

from shoal.client import Consumer, OffsetAndMetadata, Producer, RecordMetadata, TopicPartition
from shoal.client.errors import ConsumerClosedError, ProducerClosedError, UnknownTopic


def test_blocking_produce_and_consume(cluster_factory):
    cluster = cluster_factory(2, {"t": 4})
    with Producer(str(cluster.config_path), linger_ms=2) as producer:
        futures = [producer.send("t", f"v{i}", key=f"k{i % 7}") for i in range(500)]
        producer.flush()
        assert all(f.done() for f in futures)
        assert len({(f.result().partition, f.result().offset) for f in futures}) == 500
        meta = producer.send_and_wait("t", b"last", partition=3)
        assert isinstance(meta, RecordMetadata) and meta.partition == 3
        with pytest.raises(UnknownTopic):
            producer.send("nope", b"x").result(timeout=10)
        with pytest.raises(UnknownTopic):
            producer.send_and_wait("nope", b"x")
    seen = []
    with Consumer("t", bootstrap=cluster.urls, group="sync", fetch_max_wait_ms=100) as consumer:
        for record in consumer:
            seen.append(record)
            if len(seen) == 250:
                consumer.commit()
            if len(seen) == 501:
                break
        assert consumer.getmany(timeout_ms=200) == {}
        committed = {tp: consumer.committed(tp) for tp in consumer.assignment()}
    assert sorted(r.value for r in seen) == sorted([f"v{i}".encode() for i in range(500)] + [b"last"])
    assert sum(c.offset for c in committed.values() if c) == 250  # what the iterator had handed out

    with Consumer(bootstrap=cluster.urls, group="sync") as again:
        again.assign([TopicPartition("t", p) for p in range(4)])
        rest = []
        while len(rest) < 251:
            for records in again.getmany(timeout_ms=1000).values():
                rest.extend(records)
        again.seek(TopicPartition("t", 3), 0)
        assert again.position(TopicPartition("t", 3)) == 0
        again.commit({TopicPartition("t", 3): 1})
        assert again.committed(TopicPartition("t", 3)) == OffsetAndMetadata(1, "")
    assert {(r.partition, r.offset) for r in rest}.isdisjoint({(r.partition, r.offset) for r in seen[:250]})


def test_records_sent_from_several_threads_keep_each_thread_s_order(cluster_factory):
    cluster = cluster_factory(1, {"t": 1})
    with Producer(cluster.urls, max_pending=50) as producer:
        def worker(name):
            return [producer.send("t", f"{name}:{i}") for i in range(2000)]

        results = {}
        threads = [threading.Thread(target=lambda n=n: results.update({n: worker(n)})) for n in "abc"]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for futures in results.values():
            offsets = [f.result(timeout=30).offset for f in futures]
            assert offsets == sorted(offsets) and len(set(offsets)) == 2000


def test_blocking_wrappers_report_errors_and_close_cleanly(cluster_factory):
    cluster = cluster_factory(1, {"t": 1})
    producer = Producer(cluster.urls)
    future = producer.send("t", b"x")
    producer.close()
    producer.close()
    assert future.result(timeout=0).offset == 0  # close() flushed it
    with pytest.raises(ProducerClosedError):
        producer.send("t", b"y")
    with pytest.raises(ProducerClosedError):
        producer.flush()
    with pytest.raises(UnknownTopic):
        Consumer("nope", bootstrap=cluster.urls)
    consumer = Consumer(bootstrap=cluster.urls)
    consumer.close()
    with pytest.raises(ConsumerClosedError):
        consumer.getmany()
    with pytest.raises(ConsumerClosedError):
        consumer.getone()
    assert list(consumer) == []


def test_blocking_send_batch_keeps_order_behind_send(cluster_factory):
    """send_batch() queues after what send() handed over; result() gives every record's metadata."""
    cluster = cluster_factory(1, {"t": 1})
    with Producer(cluster.urls) as producer:
        first = producer.send("t", b"before")
        batch = producer.send_batch("t", [f"b{i}" for i in range(100)])
        metas = batch.result(timeout=30)
        assert first.result(timeout=30).offset == 0
        assert [m.offset for m in metas] == list(range(1, 101)) and len(batch) == 100
        with pytest.raises(UnknownTopic):
            producer.send_batch("nope", [b"x"])
    with Consumer("t", bootstrap=cluster.urls) as consumer:
        got = consumer.getmany(timeout_ms=5000)[TopicPartition("t", 0)]
    assert got[0].value == b"before" and got[1].value == b"b0"
