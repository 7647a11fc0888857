"""confluent-kafka (librdkafka, in C) against shoal's Kafka listener: a native client's view of the broker.

- produce: ``Producer.produce()`` per record, ``linger.ms`` 5, ``batch.num.messages``
  the workload's batch, acks=all, idempotence off (the client's defaults otherwise);
  delivery reports served by ``poll(0)`` every 1,000 records and a final ``flush()``.
- consume: a ``Consumer`` assigned partition 0 from offset 0, ``consume(10000)`` calls.
- latency: records sent as they fall due (``Pacer``); each one's delivery report
  gives its latency from when it was due.

librdkafka does its network work on its own threads, so the client-CPU figures of
this system count those threads too (they are this process's).
"""

from __future__ import annotations

import asyncio
import time

from shoal.router.cli.bench_driver import BenchResult, LatencyRecorder, Pacer

from .workloads import batch_sizes


class ConfluentKafka:
    name = "confluent-kafka"

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def _producer(self, batch: int):
        from confluent_kafka import Producer

        return Producer({
            "bootstrap.servers": self.bootstrap, "linger.ms": 5, "acks": "all",
            "batch.num.messages": max(1, min(batch, 1_000_000)), "queue.buffering.max.messages": 1_000_000,
        })  # fmt: skip

    async def produce(self, stream, *, records, batch, value, max_seconds=None) -> BenchResult:
        producer = self._producer(batch)
        errors = 0

        def report(err, _msg) -> None:
            nonlocal errors
            if err is not None:
                errors += 1

        producer.produce(stream, value, partition=0, on_delivery=report)  # metadata, connection
        producer.flush(30)
        sent = 0
        start = time.perf_counter()
        for n in batch_sizes(records, batch, max_seconds):
            for _ in range(n):
                while True:
                    try:
                        producer.produce(stream, value, partition=0, on_delivery=report)
                        break
                    except BufferError:  # the local queue is full: serve delivery reports
                        producer.poll(0.01)
            sent += n
            producer.poll(0)
        left = producer.flush(60)
        seconds = time.perf_counter() - start
        return BenchResult(sent - left, (sent - left) * len(value), seconds, None, errors=errors + left)

    async def consume(self, stream, *, records) -> BenchResult:
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"bench-{stream}",
                             "enable.auto.commit": False, "fetch.max.bytes": 8 << 20, "queued.min.messages": 1_000_000})  # fmt: skip
        consumer.assign([TopicPartition(stream, 0, 0)])
        got = size = 0
        start = time.perf_counter()
        idle_until = start + 30
        try:
            while got < records and time.perf_counter() < idle_until:
                msgs = consumer.consume(10_000, 1.0)
                if msgs:
                    idle_until = time.perf_counter() + 30
                for m in msgs:
                    if m.error() is None:
                        got += 1
                        size += len(m.value())
            return BenchResult(got, size, time.perf_counter() - start, None)
        finally:
            consumer.close()

    async def latency(self, stream, *, rate, duration, value) -> BenchResult:
        producer = self._producer(1000)
        producer.produce(stream, value, partition=0)
        producer.flush(30)
        recorder = LatencyRecorder()

        def report(due: float, err, _msg) -> None:
            if err is not None:
                recorder.errors += 1
            else:
                recorder.samples.append(time.perf_counter() - due)

        pacer = Pacer(rate, duration=duration)
        start = time.perf_counter()
        while not pacer.done:
            for due in pacer.take() or await pacer.due():
                producer.produce(stream, value, partition=0, on_delivery=lambda err, msg, d=due: report(d, err, msg))
            producer.poll(0)
        while len(producer):
            producer.poll(0.001)
            await asyncio.sleep(0)
        n = len(recorder.samples)
        return BenchResult(n, n * len(value), time.perf_counter() - start, recorder.summary(), errors=recorder.errors)
