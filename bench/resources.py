"""What a broker costs besides speed: many partitions at rest, and restart after kill -9.

- ``partitions_run``: one broker owning one topic of N partitions. Reads RSS and
  threads once it serves, again after one record was written to every partition,
  then the CPU it burns over an idle interval.
- ``restart_run``: fill one partition with a large log, kill -9 the broker, start it
  again and time (from spawn) until ``/v1/health`` answers and until the last record
  can be fetched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from shoal.client.http import BrokerClient
from shoal.client.records import encode_batch

from .procs import wait_until
from .shoal_broker import ShoalBroker

log = logging.getLogger(__name__)

MIB = 1024 * 1024


def _mib(n: int) -> float:
    return round(n / MIB, 1)


def partitions_run(partitions: int, idle_seconds: float, **broker_kw) -> dict:
    """Resource readings of one broker owning ``partitions`` partitions.

    The idle interval starts once the writes' deferred fsyncs are due and done (one
    flush interval plus a second); the CPU of that settling is reported apart.
    """
    with ShoalBroker({"many": partitions}, **broker_kw) as broker:
        started = {"rss_mib": _mib(broker.rss_bytes()), "threads": broker.threads()}
        written = asyncio.run(touch_all(broker.url, "many", partitions))
        touched = {"rss_mib": _mib(broker.rss_bytes()), "threads": broker.threads(), "seconds": round(written, 3)}
        settle = _cpu_percent(broker, broker.flush_interval_ms / 1000 + 1)
        idle = _cpu_percent(broker, idle_seconds)
        rest = {"rss_mib": _mib(broker.rss_bytes()), "threads": broker.threads()}
    return {
        "partitions": partitions,
        "at_start": started,
        "after_one_record_each": touched,
        "settling_cpu_percent": settle,
        "idle_seconds": idle_seconds,
        "idle_cpu_percent": idle,
        "at_rest": rest,
    }


def _cpu_percent(broker: ShoalBroker, seconds: float) -> float:
    """The broker's CPU use over the next ``seconds`` (a measurement interval, not a wait)."""
    cpu0, t0 = broker.cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    return round(100 * (broker.cpu_seconds() - cpu0) / (time.monotonic() - t0), 2)


async def touch_all(url: str, topic: str, partitions: int, concurrency: int = 32) -> float:
    """Write one record to every partition; return the seconds it took."""
    frame = encode_batch([(None, b"x" * 100, None, None)])
    http = BrokerClient()
    await http.start()
    gate = asyncio.Semaphore(concurrency)

    async def one(p: int) -> None:
        async with gate:
            await http.produce(url, topic, p, frame)

    try:
        start = time.perf_counter()
        await asyncio.gather(*(one(p) for p in range(partitions)))
        return time.perf_counter() - start
    finally:
        await http.close()


def restart_run(size_bytes: int, **broker_kw) -> dict:
    """Restart timings of a broker holding one partition of about ``size_bytes``."""
    broker = ShoalBroker({"big": 1}, **broker_kw)
    try:
        broker.start()
        records, fill_s = asyncio.run(_fill(broker.url, "big", size_bytes))
        stored = _dir_bytes(broker.dir / "data")
        broker.kill9()
        spawn = time.monotonic()
        broker.start()
        ready_s = time.monotonic() - spawn
        wait_until(lambda: _serves(broker, records - 1), timeout=60, what="fetch of the last record")
        serving_s = time.monotonic() - spawn
    finally:
        broker.stop()
    return {
        "log_bytes": stored,
        "log_gib": round(stored / 1024**3, 3),
        "records": records,
        "fill_seconds": round(fill_s, 2),
        "fill_mb_per_s": round(stored / 1e6 / fill_s, 1) if fill_s else 0,
        "ready_seconds": round(ready_s, 3),
        "serving_seconds": round(serving_s, 3),
    }


async def _fill(url: str, topic: str, size_bytes: int, in_flight: int = 2) -> tuple[int, float]:
    """Append ~1 MB frames of 100-byte records until ``size_bytes`` are stored."""
    frame = encode_batch([(None, b"v" * 100, None, None)] * 9_000)
    count = 9_000
    batches = max(1, size_bytes // len(frame))
    http = BrokerClient()
    await http.start()
    queue = iter(range(batches))

    async def worker() -> None:
        for _ in queue:
            await http.produce(url, topic, 0, frame)

    try:
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        elapsed = time.perf_counter() - start
    finally:
        await http.close()
    log.info("filled %s/0 with %d records (%d MiB) in %.1fs", topic, batches * count, batches * len(frame) // MIB, elapsed)
    return batches * count, elapsed


def _serves(broker: ShoalBroker, offset: int) -> bool:
    status, body = broker.get(f"/v1/topics/big/partitions/0/records?offset={offset}&max_bytes=1")
    return status == 200 and len(body) > 0


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
