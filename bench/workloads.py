"""The workloads every system runs, and the interface each system's driver implements.

One producer, then one consumer, of fixed-size records:

- produce: ``records`` records sent in batches of ``batch`` (what a batch is depends on
  the system: one pipeline for Redis, the outstanding-ack window for NATS, one frame
  for shoal), until all are acknowledged or no new batch starts after ``max_seconds``;
- consume: read them back from the start, as large reads as the system allows;
- latency: records due at a fixed ``rate`` for ``duration`` seconds, each timed from
  the moment it was due until its acknowledgement (``shoal.router.cli.bench_driver.Pacer``).

Throughput counts record payload bytes only, so different framings compare fairly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from shoal.router.cli.bench_driver import BenchResult, LatencyRecorder, Pacer


class System(Protocol):
    """A driver for one system under test; connections are made in ``open()``."""

    name: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def produce(
        self, stream: str, *, records: int, batch: int, value: bytes, max_seconds: float | None = None
    ) -> BenchResult: ...

    async def consume(self, stream: str, *, records: int) -> BenchResult: ...

    async def latency(self, stream: str, *, rate: float, duration: float, value: bytes) -> BenchResult: ...


def batch_sizes(records: int, batch: int, max_seconds: float | None):
    """Yield the size of each batch of a produce run until ``records`` are handed out or
    ``max_seconds`` have passed since the first batch."""
    end = time.perf_counter() + max_seconds if max_seconds is not None else math.inf
    left = records
    while left > 0 and time.perf_counter() < end:
        n = min(batch, left)
        left -= n
        yield n


async def paced_batches(rate: float, duration: float, record_size: int, send: Callable[[int], Awaitable]) -> BenchResult:
    """The latency run for systems that acknowledge a batch at once.

    One request in flight, as a partition's producer has: whenever the previous reply
    is in, every record due by then goes out as one ``send(n)``, so batches grow when
    replies are slow. Each record's latency counts from when it was due.
    """
    pacer = Pacer(rate, duration=duration)
    recorder = LatencyRecorder()
    start = time.perf_counter()
    while not pacer.done:
        due = pacer.take() or await pacer.due()
        await send(len(due))
        recorder.ack_many(due)
    n = len(recorder.samples)
    return BenchResult(n, n * record_size, time.perf_counter() - start, recorder.summary())
