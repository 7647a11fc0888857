"""The acks=all path on real brokers and a real etcd: what stands between a leader's
append and the high watermark that acknowledges it. Speed is measured by the
benchmarks (bench/replicated.py), never asserted here; these tests check, by the
brokers' own counters, that no timer of the write path sits on that path and that the
followers' fetches, which carry what moves the high watermark, go on their streams."""

from __future__ import annotations

import asyncio
import re
import urllib.request

import pytest

from tests.faults.checker import BROKERS, TOPIC, in_sync
from tests.faults.checker import produce as produce_to


@pytest.fixture
def always(cluster_factory, etcd_server, cluster_name):
    """Three brokers, one partition at factor 3 written with ``flush: always`` (the writer
    lingers 1 ms for company there, to share an fsync)."""
    return cluster_factory(
        3, {TOPIC: 1}, name=cluster_name, flush="always",
        metadata={"etcd": [etcd_server.url], "lease_ttl_ms": 2000, "replica_lag_time_max_ms": 3000},
        replication_factor=3, min_insync_replicas=2,
    )  # fmt: skip


def lingers(url: str, topic: str = TOPIC, partition: int = 0) -> int:
    """The broker's ``shoal_partition_write_lingers`` counter of one partition."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    pattern = rf'^shoal_partition_write_lingers_total{{partition="{partition}",topic="{topic}"}} (\S+)$'
    found = re.search(pattern, text, re.M)
    assert found, f"no write-lingers counter for {topic}/{partition} at {url}"
    return int(float(found.group(1)))


async def test_a_followers_copy_never_waits_for_write_company(always):
    """A follower's replicated append is written at once: it has no company to wait
    for (one fetcher appends and waits before fetching again), and its next fetch
    carries the log end every acks=all produce waits on. The leader's own appends
    still linger under ``flush: always``."""
    state = await in_sync(always)
    leader = state["leader"]
    followers = [b for b in BROKERS if b != leader]
    for i in range(20):
        status, ack = await asyncio.to_thread(produce_to, always.url(leader), f"v{i}", acks="all")
        assert status == 200, ack
    assert await asyncio.to_thread(lingers, always.url(leader)) >= 20
    for follower in followers:
        assert await asyncio.to_thread(lingers, always.url(follower)) == 0, f"follower {follower} lingered"


@pytest.fixture
def interval(cluster_factory, etcd_server, cluster_name):
    """Three brokers, one partition at factor 3 (the default flush policy)."""
    return cluster_factory(
        3, {TOPIC: 1}, name=cluster_name,
        metadata={"etcd": [etcd_server.url], "lease_ttl_ms": 2000, "replica_lag_time_max_ms": 3000},
        replication_factor=3, min_insync_replicas=2,
    )  # fmt: skip


def metric(url: str, name: str) -> float:
    """One unlabelled (or fully labelled, as written in ``name``) sample of ``/metrics``."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert found, f"no {name} at {url}"
    return float(found.group(1))


async def test_followers_fetch_on_one_stream_each(interval):
    """Each follower sends its fetches to the leader on one WebSocket it keeps open, not
    one HTTP request each: every acks=all produce is answered after the fetches that
    carried the batch and the new log end went over those streams."""
    state = await in_sync(interval)
    url = interval.url(state["leader"])
    before = await asyncio.to_thread(metric, url, 'shoal_replica_fetches_total{transport="stream"}')
    for i in range(20):
        status, ack = await asyncio.to_thread(produce_to, url, f"v{i}", acks="all")
        assert status == 200, ack
    assert await asyncio.to_thread(metric, url, "shoal_replica_streams") == 2
    # each produce is answered only after both followers' fetches reported it
    assert await asyncio.to_thread(metric, url, 'shoal_replica_fetches_total{transport="stream"}') >= before + 20
    assert await asyncio.to_thread(metric, url, 'shoal_replica_fetches_total{transport="http"}') == 0
