"""Load: 200 concurrent producers and 50 slow consumers against one broker process.

The broker's memory stays bounded (peak RSS read from /proc) and it stays responsive
(every health check answers while the load runs). The default run lasts 8 s;
``SHOAL_SOAK=1`` runs 20 s. Throughput is printed, never asserted: speed belongs to
the benchmarks.
"""

from __future__ import annotations

import asyncio
import random
import time

import aiohttp
import pytest

from shoal.client.records import encode_batch
from tests.harness import env_flag

pytestmark = pytest.mark.soak

BATCH = "application/vnd.shoal.batch"
PRODUCERS, CONSUMERS, PARTITIONS = 200, 50, 8
SECONDS = 20 if env_flag("SHOAL_SOAK") else 8
MAX_RSS_MIB = 256


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


async def produce(http, url: str, p: int, stop: asyncio.Event, counts: dict) -> None:
    body = encode_batch([(None, b"r" * 100, None, None)] * 10)
    while not stop.is_set():
        async with http.post(f"{url}/v1/topics/load/partitions/{p}/records", data=body,
                             headers={"Content-Type": BATCH}) as resp:
            await resp.read()
            counts[resp.status] = counts.get(resp.status, 0) + 1
            if resp.status == 429:
                await asyncio.sleep(0.05)


async def consume_slowly(http, url: str, p: int, stop: asyncio.Event, counts: dict) -> None:
    """Long-poll, then drain the answer 4 KiB at a time with pauses: a slow reader."""
    offset = 0
    while not stop.is_set():
        async with http.get(f"{url}/v1/topics/load/partitions/{p}/records", headers={"Accept": BATCH},
                            params={"offset": offset, "max_wait_ms": 500, "max_bytes": 256 * 1024}) as resp:
            counts[resp.status] = counts.get(resp.status, 0) + 1
            if resp.status != 200:
                await resp.read()
                await asyncio.sleep(0.05)
                continue
            offset = int(resp.headers["Shoal-High-Watermark"])
            while await resp.content.read(4096):
                await asyncio.sleep(0.01)


async def test_memory_stays_bounded_and_health_answers_under_load(cluster_factory):
    cluster = cluster_factory(1, {"load": {"partitions": PARTITIONS, "retention_bytes": 32 << 20}})
    url = cluster.url(1)
    pid = cluster.procs[1].pid
    stop = asyncio.Event()
    produced: dict[int, int] = {}
    fetched: dict[int, int] = {}
    health: list[float] = []
    peak_rss = 0
    rng = random.Random(1)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        tasks = [asyncio.create_task(produce(http, url, i % PARTITIONS, stop, produced)) for i in range(PRODUCERS)]
        tasks += [asyncio.create_task(consume_slowly(http, url, rng.randrange(PARTITIONS), stop, fetched))
                  for _ in range(CONSUMERS)]
        started = time.monotonic()
        try:
            async with aiohttp.ClientSession() as probe:  # its own connection: never queued behind the load
                while time.monotonic() - started < SECONDS:
                    asked = time.monotonic()
                    async with probe.get(url + "/v1/health", timeout=aiohttp.ClientTimeout(total=10)) as resp:
                        assert resp.status == 200
                    health.append(time.monotonic() - asked)
                    peak_rss = max(peak_rss, rss_kib(pid)[0])
                    await asyncio.sleep(0.25)
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        elapsed = time.monotonic() - started
        async with http.get(url + "/v1/health") as resp:
            assert resp.status == 200
    _, hwm = rss_kib(pid)
    assert produced.get(200, 0) > 0 and fetched.get(200, 0) > 0
    assert set(produced) <= {200, 429} and set(fetched) <= {200, 429}, (produced, fetched)
    assert hwm < MAX_RSS_MIB * 1024, f"peak RSS {hwm / 1024:.0f} MiB"
    health.sort()
    print(f"\nload: {PRODUCERS} producers + {CONSUMERS} slow consumers for {elapsed:.0f}s: "
          f"{produced.get(200, 0) * 10 / elapsed:,.0f} records/s acknowledged, {fetched.get(200, 0)} fetches, "
          f"throttled {produced.get(429, 0)}; peak RSS {hwm / 1024:.0f} MiB; {len(health)} health checks, "
          f"slowest {health[-1] * 1000:.0f} ms, median {health[len(health) // 2] * 1000:.0f} ms")
