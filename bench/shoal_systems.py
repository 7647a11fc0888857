"""shoal drivers: through the client library (per record, or in bulk), and "raw" HTTP
with pre-encoded batches.

Together they separate client cost from broker cost:

- ``ShoalClient`` runs ``shoal.router.cli.bench_driver`` (what ``shoal bench`` runs): AsyncProducer
  with one ``send()`` per record, AsyncConsumer's ``getmany()`` building every ``Record``.
- ``ShoalBulk`` is the same library through its bulk calls: ``send_batch()`` of a whole
  batch per call, ``getbatches()`` read by column. Like a Redis pipeline, the
  application hands over many records at once: the like-for-like comparison.
- ``ShoalRaw`` posts frames made once by ``encode_batch`` before the clock starts, one
  request in flight by default (as the client has per partition), through the client's bare HTTP layer (``BrokerClient``), and
  counts fetched records from frame headers (no CRC check, no record decoding): what
  remains is HTTP plus the broker.
"""

from __future__ import annotations

import asyncio
import time

from shoal.client.accumulator import BATCH_OVERHEAD, record_size
from shoal.client.http import BrokerClient
from shoal.client.records import decode_records, encode_batch, iter_frames
from shoal.router.cli import bench_driver as perf
from shoal.router.cli.bench_driver import BenchResult

from .workloads import batch_sizes, paced_batches

FETCH_BYTES = 8 * 1024 * 1024
BUFFERED_BATCHES = 8
LATENCY_BULK = 1000  # most records per send_batch() in the paced run (a 1 ms tick at 10,000/s holds ~10)


class ShoalClient:
    name = "shoal"
    bulk = False

    def __init__(self, url: str) -> None:
        self.url = url

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def produce(self, stream, *, records, batch, value, max_seconds=None) -> BenchResult:
        """A batch is ``max_batch_bytes`` for ``batch`` records; the buffer holds BUFFERED_BATCHES
        of them, so a timed run stops within a few batches of its time."""
        batch_bytes = BATCH_OVERHEAD + batch * record_size(None, value, None)
        return await perf.produce(
            self.url,
            stream,
            records=records,
            duration=max_seconds,
            record_size=len(value),
            batch_bytes=batch_bytes,
            buffer_bytes=max(BUFFERED_BATCHES * batch_bytes, 64 * 1024),
            bulk=batch if self.bulk else None,
        )

    async def consume(self, stream, *, records) -> BenchResult:
        return await perf.consume(self.url, stream, records=records, idle_timeout=5.0, records_api=not self.bulk)

    async def latency(self, stream, *, rate, duration, value) -> BenchResult:
        """In bulk, the records due in one tick go out in one ``send_batch()``."""
        return await perf.produce(self.url, stream, duration=duration, record_size=len(value), rate=rate,
                                  bulk=LATENCY_BULK if self.bulk else None)  # fmt: skip


class ShoalBulk(ShoalClient):
    name = "shoal-bulk"
    bulk = True


class ShoalRaw:
    """Args: ``in_flight``: concurrent produce requests (1, as the client has per partition)."""

    name = "shoal-raw"

    def __init__(self, url: str, *, in_flight: int = 1) -> None:
        self.url = url
        self.in_flight = in_flight
        self.http = BrokerClient()

    async def open(self) -> None:
        await self.http.start()

    async def close(self) -> None:
        await self.http.close()

    async def produce(self, stream, *, records, batch, value, max_seconds=None) -> BenchResult:
        frames = {n: encode_batch([(None, value, None, None)] * n) for n in {min(batch, records), records % batch or batch}}
        sizes = batch_sizes(records, batch, max_seconds)
        sent = 0

        async def worker() -> None:
            nonlocal sent
            for n in sizes:
                await self.http.produce(self.url, stream, 0, frames[n])
                sent += n

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(self.in_flight)))
        return BenchResult(sent, sent * len(value), time.perf_counter() - start)

    async def consume(self, stream, *, records) -> BenchResult:
        """Counts records from frame headers; payload bytes are the first record's size times the count."""
        offset = got = 0
        value_size = None
        start = last = time.perf_counter()
        while got < records:
            fetched = await self.http.fetch(self.url, stream, 0, offset, max_bytes=FETCH_BYTES, max_wait_ms=5000)
            frames = list(iter_frames(fetched.body, check_crc=False))
            if not frames:
                break
            for header, _ in frames:
                got += header.next_offset - max(offset, header.base_offset)
            if value_size is None:
                header, frame = frames[0]
                value_size = len(decode_records(stream, 0, header, frame)[0].value or b"")
            offset = frames[-1][0].next_offset
            last = time.perf_counter()
        return BenchResult(got, got * (value_size or 0), last - start)

    async def latency(self, stream, *, rate, duration, value) -> BenchResult:
        """Records due in the same tick go out as one batch (encoded in the loop here)."""

        async def send(n: int) -> None:
            await self.http.produce(self.url, stream, 0, encode_batch([(None, value, None, None)] * n))

        return await paced_batches(rate, duration, len(value), send)
