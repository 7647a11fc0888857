"""A follower whose disk lost its unflushed tail: SIGKILL it, cut its active segment file
back to an earlier byte (mid-frame), start it again. It recovers (the torn frame goes),
truncates by the epoch-end protocol, fetches again, and every replica holds the same
frames below the high watermark; nothing acknowledged with ``acks=all`` is lost
(factor 3, ``min_insync_replicas`` 2). Short by default; ``SHOAL_SOAK=1`` does it five
times, each time to another follower."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.faults.checker import BROKERS, TOPIC, Workload, check_history, in_sync
from tests.harness import env_flag


@pytest.fixture
def replicated(cluster_factory, etcd_server, cluster_name):
    return cluster_factory(
        3, {TOPIC: 1}, name=cluster_name,
        metadata={"etcd": [etcd_server.url], "lease_ttl_ms": 2000, "replica_lag_time_max_ms": 3000},
        replication_factor=3, min_insync_replicas=2, flush="never",
    )  # fmt: skip


def lose_tail(cluster, broker: int, fraction: float = 0.5) -> tuple[int, int]:
    """Cut broker ``broker``'s active segment of orders/0 to ``fraction`` of its size, as a
    disk that lost what was never fsynced; return (size before, after)."""
    d = Path(cluster.config["brokers"][broker - 1]["data_dir"]) / f"{TOPIC}-0"
    active = max(d.glob("*.log"))
    size = active.stat().st_size
    cut = int(size * fraction)
    os.truncate(active, cut)
    return size, cut


async def lost_tails(cluster, rounds: int, capsys) -> None:
    leader = (await in_sync(cluster))["leader"]
    followers = [b for b in BROKERS if b != leader]
    work = Workload(cluster.urls).start()
    cuts = []
    for i in range(rounds):
        follower = followers[i % 2]
        await work.acked_count(100)
        cluster.kill(follower)
        cuts.append(lose_tail(cluster, follower))
        await asyncio.to_thread(cluster.start, follower)
        await work.acked_count(100)
        await in_sync(cluster, leader)
    history = await work.stop()
    await check_history(cluster, history, leader=leader)
    with capsys.disabled():
        print(f"\nfollower lost its tail x{rounds}: {len(history.acked)} acknowledged, 0 lost, 0 duplicated; "
              "segment bytes (before, after the cut): " + ", ".join(f"({a}, {b})" for a, b in cuts))


async def test_a_follower_that_lost_its_unflushed_tail_recovers_and_refetches(replicated, capsys):
    await lost_tails(replicated, 1, capsys)


@pytest.mark.soak
@pytest.mark.skipif(not env_flag("SHOAL_SOAK"), reason="SHOAL_SOAK=1 runs it; the default run cuts one tail")
async def test_lost_tail_loop(replicated, capsys):
    await lost_tails(replicated, 5, capsys)
