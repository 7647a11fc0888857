"""NATS JetStream driver: async publish with a bounded ack window, pull consumer with large fetches.

Through nats-py. Each run gets its own file-storage stream named after it, with one
subject of the same name. A produce "batch" is the window of outstanding publish
acks (``publish_async_max_pending``): NATS has no client-side batch, and the window
is what lets the client pipeline. The pull consumer is durable with ``AckPolicy.NONE``
(the server moves the consumer's position as it delivers, like an auto-commit).
"""

from __future__ import annotations

import asyncio
import time

import nats
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

from shoal.router.cli.bench_driver import BenchResult, LatencyRecorder, Pacer

from .workloads import batch_sizes

FETCH = 10_000


class NatsJetStream:
    name = "nats"

    def __init__(self, url: str) -> None:
        self.url = url
        self.nc = None

    async def open(self) -> None:
        self.nc = await nats.connect(self.url, allow_reconnect=False)

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()

    async def _stream(self, stream: str, window: int):
        js = self.nc.jetstream(publish_async_max_pending=window)
        await js.add_stream(StreamConfig(name=stream, subjects=[stream], storage=StorageType.FILE))
        return js

    async def produce(self, stream, *, records, batch, value, max_seconds=None) -> BenchResult:
        js = await self._stream(stream, batch)
        recorder = LatencyRecorder()
        start = time.perf_counter()
        for n in batch_sizes(records, batch, max_seconds):
            for _ in range(n):
                recorder.track(await js.publish_async(stream, value), time.perf_counter())
        await js.publish_async_completed()
        elapsed = time.perf_counter() - start
        acked = len(recorder.samples)
        return BenchResult(acked, acked * len(value), elapsed, errors=recorder.errors)

    async def consume(self, stream, *, records) -> BenchResult:
        js = self.nc.jetstream()
        sub = await js.pull_subscribe(
            stream, durable="bench", stream=stream, config=ConsumerConfig(ack_policy=AckPolicy.NONE)
        )
        got = payload = 0
        start = last = time.perf_counter()
        while got < records:
            try:
                msgs = await sub.fetch(batch=min(FETCH, records - got), timeout=5)
            except asyncio.TimeoutError:
                break
            got += len(msgs)
            payload += sum(len(m.data) for m in msgs)
            last = time.perf_counter()
        await sub.unsubscribe()
        return BenchResult(got, payload, last - start)

    async def latency(self, stream, *, rate, duration, value) -> BenchResult:
        js = await self._stream(stream, 100_000)
        pacer = Pacer(rate, duration=duration)
        recorder = LatencyRecorder()
        start = time.perf_counter()
        while not pacer.done:
            for due in await pacer.due():
                recorder.track(await js.publish_async(stream, value), due)
        await js.publish_async_completed()
        n = len(recorder.samples)
        return BenchResult(n, n * len(value), time.perf_counter() - start, recorder.summary(), recorder.errors)
