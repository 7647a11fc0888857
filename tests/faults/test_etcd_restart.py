"""etcd SIGKILLed and restarted under an ``acks=all`` load on real brokers: the leader
stops acknowledging once its lease may have lapsed, nothing acknowledged is lost, and
service resumes when etcd is back. The test's own etcd (not the session's) is killed.
Short by default; ``SHOAL_SOAK=1`` kills it five times."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from tests.faults.checker import TOPIC, Workload, check_history, in_sync, produce, state_of
from tests.harness import EtcdServer, env_flag
from tests.metadata.helpers import poll

TTL_MS = 2000


@pytest.fixture
def own_etcd(tmp_path):
    server = EtcdServer(tmp_path / "etcd")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def replicated(cluster_factory, own_etcd, cluster_name):
    return cluster_factory(
        3, {TOPIC: 1}, name=cluster_name,
        metadata={"etcd": [own_etcd.url], "lease_ttl_ms": TTL_MS, "replica_lag_time_max_ms": 3000},
        replication_factor=3, min_insync_replicas=2,
    )  # fmt: skip


async def kill_etcd(cluster, etcd: EtcdServer, work: Workload) -> tuple[float, float]:
    """SIGKILL etcd, wait until the leader refuses, start etcd again on its data; return
    (refusing after s, acks=all again after the restart s)."""
    await work.acked_count(30)
    leader = (await asyncio.to_thread(state_of, cluster.url(1)))["leader"]
    etcd.signal(signal.SIGKILL)
    etcd.proc.wait(10)
    killed_at = time.monotonic()

    async def refused():
        status, body = await asyncio.to_thread(produce, cluster.url(leader), "while etcd is down", acks="1")
        return body if status == 503 else None

    body = await poll(refused, timeout=20)
    assert body["code"] == "LEADER_NOT_AVAILABLE" and "lease" in body["detail"]
    refusing = time.monotonic() - killed_at
    await asyncio.to_thread(etcd.start)
    back_at = time.monotonic()
    await work.acked_count(30, timeout=60)
    return refusing, time.monotonic() - back_at


async def etcd_kills(cluster, etcd, rounds: int, capsys) -> None:
    await in_sync(cluster)
    async with Workload(cluster.urls) as work:
        times = [await kill_etcd(cluster, etcd, work) for _ in range(rounds)]
        history = await work.stop()
    await check_history(cluster, history)
    with capsys.disabled():
        print(f"\netcd SIGKILL x{rounds}: {len(history.acked)} acknowledged, 0 lost, 0 duplicated; (leader refusing "
              "after the kill s, first acks=all after the restart s): " + ", ".join(f"({a:.2f}, {b:.2f})" for a, b in times))


async def test_etcd_killed_and_restarted_loses_nothing_acknowledged(replicated, own_etcd, capsys):
    await etcd_kills(replicated, own_etcd, 1, capsys)


@pytest.mark.soak
@pytest.mark.skipif(not env_flag("SHOAL_SOAK"), reason="SHOAL_SOAK=1 runs it; the default run kills etcd once")
async def test_etcd_kill_loop(replicated, own_etcd, capsys):
    await etcd_kills(replicated, own_etcd, 5, capsys)
