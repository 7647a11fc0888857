"""Helpers of the metadata tests."""

from __future__ import annotations

import asyncio
import urllib.request

# The replicated cluster most metadata tests run: etcd's 2 s leases, a follower out of
# the ISR after 3 s behind, every partition at factor 3 with two in sync to acknowledge.
REPLICATION = {"replication_factor": 3, "min_insync_replicas": 2}


def replicated_cluster(cluster_factory, etcd_url: str, name: str, brokers: int, topics: dict, **options):
    """``cluster_factory(...)`` of ``brokers`` brokers on etcd at ``etcd_url`` (see ``REPLICATION``)."""
    metadata = {"etcd": [etcd_url], "lease_ttl_ms": 2000, "replica_lag_time_max_ms": 3000}
    return cluster_factory(brokers, topics, name=name, metadata=metadata, **REPLICATION, **options)


def scrape(url: str) -> dict[str, float]:
    """``{'name{labels}': value}`` of a broker's /metrics (labels as Prometheus writes them)."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        lines = resp.read().decode().splitlines()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if line and line[0] != "#"}


async def poll(check, timeout: float = 10.0, interval: float = 0.05):
    """Await ``check()`` until it returns something truthy (returned), failing after ``timeout``."""
    async with asyncio.timeout(timeout):
        while not (result := await check()):
            await asyncio.sleep(interval)
    return result
