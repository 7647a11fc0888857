"""A broker's lease against a real etcd while its event loop is busy or wedged: renewals
come from a thread of their own, but only while the loop still runs."""

from __future__ import annotations

import asyncio
import time

import pytest

from shoal.router.metadata.lease import BrokerLease
from shoal.router.metadata.store import cluster_prefix
from tests.metadata.helpers import poll


def _busy(seconds: float) -> None:
    """Hold the event loop with CPU work (pure Python: the GIL is handed over every few ms)."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += sum(range(100))


async def _renewed_after(lease: BrokerLease, when: float) -> bool:
    return lease.valid_until > when


@pytest.fixture
def prefix(cluster_name):
    return cluster_prefix(cluster_name)


async def test_lease_outlives_a_loop_busy_past_its_margin(etcd, prefix):
    """CPU work holds the loop longer than TTL - margin: the thread renews meanwhile."""
    lease = BrokerLease(etcd, prefix, 1, "http://h:1", 2000)
    await lease.start()
    try:
        first = lease.valid_until
        await poll(lambda: _renewed_after(lease, first))  # the renewer runs
        busy = lease.ttl_s - lease.margin_s + 0.3  # 1.8 s: past valid_until without a renewal
        before = lease.valid_until
        _busy(busy)
        # Still on the same loop turn: nothing but the thread can have renewed it.
        assert lease.valid_until > before + lease.interval_s
        assert lease.valid(), "the lease lapsed while the loop was busy"
        assert not lease.lost.is_set()
        assert await etcd.time_to_live(lease.lease_id) > 0
        assert (await etcd.get(lease.key)).lease == lease.lease_id
    finally:
        await lease.stop()
    assert await etcd.get(lease.key) is None


async def test_lease_lost_when_the_loop_is_wedged_past_its_ttl(etcd, prefix):
    """A blocking call wedges the loop for longer than the loop guard plus the TTL: the
    thread stops renewing, etcd lets the lease lapse, and the broker is told once its loop runs."""
    reasons = []
    lease = BrokerLease(etcd, prefix, 2, "http://h:2", 1000, on_lost=reasons.append)
    await lease.start()
    try:
        first = lease.valid_until
        await poll(lambda: _renewed_after(lease, first))
        wedged_at = time.monotonic()
        time.sleep(lease.loop_guard_s + lease.ttl_s + 0.5)  # the wedge itself (releases the GIL)
        assert not lease.valid()
        # The last renewal was sent before the guard tripped, so etcd has let it lapse by now.
        assert lease.expires_at <= wedged_at + lease.loop_guard_s + lease.ttl_s
        assert await etcd.time_to_live(lease.lease_id) == -1
        assert await etcd.get(lease.key) is None
        await asyncio.wait_for(lease.lost.wait(), 5)
        assert reasons == [lease.lost_reason] and "event loop has not run" in reasons[0]
    finally:
        await lease.stop()
