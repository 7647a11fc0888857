"""The acks=all path on real brokers and a real etcd: what stands between a leader's
append and the high watermark that acknowledges it. Speed is measured by the
benchmarks (bench/replicated.py), never asserted here; these tests check, by the
brokers' own counters, that no timer of the write path sits on that path and that the
followers' fetches, which carry what moves the high watermark, go on their streams."""

from __future__ import annotations

import asyncio

import pytest

from tests.faults.checker import BROKERS, TOPIC, in_sync
from tests.faults.checker import produce as produce_to
from tests.metadata.helpers import replicated_cluster, scrape


@pytest.fixture
def always(cluster_factory, etcd_server, cluster_name):
    """Three brokers, one partition at factor 3 written with ``flush: always`` (the writer
    lingers 1 ms for company there, to share an fsync)."""
    return replicated_cluster(cluster_factory, etcd_server.url, cluster_name, 3, {TOPIC: 1}, flush="always")


def lingers(url: str, topic: str = TOPIC, partition: int = 0) -> int:
    """The broker's ``shoal_partition_write_lingers`` counter of one partition."""
    return int(scrape(url)[f'shoal_partition_write_lingers_total{{partition="{partition}",topic="{topic}"}}'])


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
    return replicated_cluster(cluster_factory, etcd_server.url, cluster_name, 3, {TOPIC: 1})


def metric(url: str, name: str) -> float:
    """One sample of ``/metrics``, its labels as Prometheus writes them."""
    return scrape(url)[name]


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
