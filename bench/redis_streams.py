"""Redis Streams driver: XADD pipelined in batches, XREADGROUP with a large COUNT.

Through redis-py's asyncio client with the hiredis parser. A produce batch is one
pipeline (no MULTI) of XADDs, one pipeline in flight; each entry holds the value
under field ``v``. The consumer group reads with NOACK, which moves the group's
last-delivered id like an auto-commit and keeps no pending-entries list, the
closest match to a shoal consumer that commits its position.
"""

from __future__ import annotations

import csv
import subprocess
import time

import redis.asyncio as aioredis

from shoal.router.cli.bench_driver import BenchResult

from .workloads import batch_sizes, paced_batches

READ_COUNT = 10_000
GROUP = "bench"


class RedisStreams:
    name = "redis"

    def __init__(self, url: str) -> None:
        self.url = url
        self.r: aioredis.Redis | None = None

    async def open(self) -> None:
        self.r = aioredis.Redis.from_url(self.url)
        await self.r.ping()

    async def close(self) -> None:
        if self.r is not None:
            await self.r.aclose()

    async def _xadd_pipeline(self, stream: str, n: int, value: bytes) -> None:
        pipe = self.r.pipeline(transaction=False)
        for _ in range(n):
            pipe.xadd(stream, {b"v": value})
        await pipe.execute()

    async def produce(self, stream, *, records, batch, value, max_seconds=None) -> BenchResult:
        sent = 0
        start = time.perf_counter()
        for n in batch_sizes(records, batch, max_seconds):
            await self._xadd_pipeline(stream, n, value)
            sent += n
        return BenchResult(sent, sent * len(value), time.perf_counter() - start)

    async def consume(self, stream, *, records) -> BenchResult:
        await self.r.xgroup_create(stream, GROUP, id="0")
        got = payload = 0
        start = last = time.perf_counter()
        while got < records:
            reply = await self.r.xreadgroup(GROUP, "c1", {stream: ">"}, count=READ_COUNT, block=5000, noack=True)
            if not reply:
                break
            for _, entries in reply:
                got += len(entries)
                payload += sum(len(fields[b"v"]) for _, fields in entries)
            last = time.perf_counter()
        return BenchResult(got, payload, last - start)

    async def latency(self, stream, *, rate, duration, value) -> BenchResult:
        """Records due in the same tick go out as one pipeline."""
        return await paced_batches(rate, duration, len(value), lambda n: self._xadd_pipeline(stream, n, value))


def redis_benchmark(binary: str, port: int, *, records: int, pipeline: int, record_size: int) -> dict:
    """XADD rates of ``redis-benchmark`` (C, the server's own ceiling): one connection
    pipelining ``pipeline`` commands as the Python driver does, and 50 connections
    pipelining 100 each."""
    value = "v" * record_size
    out = {}
    for label, clients, depth in (("1 client", 1, pipeline), ("50 clients", 50, 100)):
        cmd = [binary, "-h", "127.0.0.1", "-p", str(port), "-n", str(records), "-c", str(clients), "-P", str(depth),
               "--csv", "XADD", f"rb-{clients}", "*", "v", value]  # fmt: skip
        try:
            text = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
            rate = float(next(csv.reader([text.strip().splitlines()[-1]]))[1])
        except (OSError, subprocess.SubprocessError, ValueError, IndexError, StopIteration) as exc:
            out[label] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        out[label] = {"clients": clients, "pipeline": depth, "records_per_s": round(rate, 1)}
    return out
