"""A broker's liveness in etcd: one leased key, kept alive, and loud when it is lost.

The key is ``brokers/<id>`` (value: ``{"id": 1, "url": "http://..."}``) attached to a
lease of ``lease_ttl_ms``. While the broker renews it, the key exists; when the broker
dies, hangs or loses etcd, etcd deletes it at most a TTL after the last renewal, and
the other replicas elect new leaders for its partitions.

The broker must stop acting as a leader *before* etcd can delete its key, or for a
moment two brokers would lead one partition. Renewals are sent every TTL/4. A renewal
sent at time ``t`` (this process's monotonic clock) that succeeds proves the lease
lives until at least ``t + TTL``: etcd restarts the TTL when the renewal *arrives*,
which is after ``t`` (a new etcd leader only lengthens leases). ``valid_until`` is
therefore ``t + TTL - margin`` with ``margin`` = TTL/4 (750 ms of the default 3 s),
which absorbs clock-rate differences and the delay between the deadline passing and
this process noticing; when it passes without a renewal, ``lost`` is set and
``on_lost`` is called. A process that is frozen (SIGSTOP, a long GC pause) notices
nothing while frozen: that case is caught by the leader epoch, which etcd bumps when
another replica takes over, so safety never rests on the clock alone.

Used from one event loop; not safe across threads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from shoal.router.metadata.etcd import EtcdClient, EtcdError, LeaseNotFound, mod_revision_is, put_op, range_op

__all__ = ["BrokerLease", "BrokerIdInUse"]

log = logging.getLogger(__name__)


class BrokerIdInUse(EtcdError):
    """Another live process holds this broker id's key (two brokers with one id?)."""


class BrokerLease:
    """Registers ``brokers/<id>`` under ``prefix`` with a lease and keeps it alive.

    Args:
        etcd: a started client.
        prefix: the cluster's key prefix (``MetadataStore.prefix``).
        broker_id, url: what the key says.
        ttl_ms: the lease TTL (whole seconds, as etcd counts).
        on_lost: called once, from the event loop, when the lease is lost.

    Example::

        lease = BrokerLease(etcd, store.prefix, 1, "http://127.0.0.1:9091", 3000, on_lost=stop_leading)
        await lease.start()
        ...
        if lease.valid(): acknowledge()
    """

    def __init__(
        self,
        etcd: EtcdClient,
        prefix: bytes,
        broker_id: int,
        url: str,
        ttl_ms: int,
        *,
        on_lost: Callable[[str], None] | None = None,
    ):
        if ttl_ms < 1000 or ttl_ms % 1000:
            raise ValueError(f"lease TTL must be whole seconds, got {ttl_ms} ms")
        self.etcd = etcd
        self.key = prefix + b"brokers/%d" % broker_id
        self.value = json.dumps({"id": broker_id, "url": url}).encode()
        self.broker_id = broker_id
        self.ttl_s = ttl_ms // 1000
        self.interval_s = self.ttl_s / 4
        self.margin_s = self.ttl_s / 4
        self.on_lost = on_lost
        self.lease_id = 0
        self.valid_until = 0.0  # monotonic: act as a live broker only before this
        self.expires_at = 0.0  # monotonic: etcd cannot delete the key before this
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self._task: asyncio.Task | None = None

    def valid(self) -> bool:
        """Whether the lease is certainly still alive in etcd (with the safety margin)."""
        return not self.lost.is_set() and time.monotonic() < self.valid_until

    def _renewed(self, sent: float, ttl_s: int) -> None:
        self.expires_at = sent + ttl_s
        self.valid_until = self.expires_at - self.margin_s

    async def start(self, *, wait_s: float | None = None) -> None:
        """Grant a lease, write the key, start renewing. Waits up to ``wait_s`` (default:
        the TTL + 1 s) for an earlier incarnation's key to expire.

        Raises:
            BrokerIdInUse: the key is still held by another lease after ``wait_s``.
            EtcdError: etcd could not be reached or refused.
        """
        if self._task is not None and not self._task.done():
            return
        deadline = time.monotonic() + (self.ttl_s + 1 if wait_s is None else wait_s)
        sent = time.monotonic()
        lease, ttl_s = await self.etcd.grant(self.ttl_s)
        try:
            while True:
                result = await self.etcd.txn([mod_revision_is(self.key, 0)], [put_op(self.key, self.value, lease=lease)], [range_op(self.key)])
                if result.succeeded:
                    break
                holder = result.ranges[0][0].lease if result.ranges and result.ranges[0] else 0
                if time.monotonic() > deadline:
                    raise BrokerIdInUse(f"broker id {self.broker_id} is registered by another process (lease {holder:x})")
                await asyncio.sleep(0.1)
                # Waiting spent lease time: renew before writing.
                sent = time.monotonic()
                ttl_s = await self.etcd.keepalive(lease)
        except BaseException:
            await self.etcd.revoke(lease)
            raise
        self.lease_id = lease
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self._renewed(sent, ttl_s)
        self._task = asyncio.create_task(self._keep_alive(), name=f"etcd-lease-broker-{self.broker_id}")
        log.info("broker %d registered in etcd with lease %x (ttl %ds)", self.broker_id, lease, self.ttl_s)

    async def stop(self) -> None:
        """Stop renewing and revoke the lease (the key goes at once)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self.lease_id and not self.lost.is_set():
            try:
                await self.etcd.revoke(self.lease_id)
            except EtcdError as exc:
                log.warning("could not revoke lease %x of broker %d: %s (it expires by itself)", self.lease_id, self.broker_id, exc)
        self.lease_id = 0
        self.valid_until = 0.0

    def _lose(self, reason: str) -> None:
        self.lost_reason = reason
        self.valid_until = 0.0
        self.lost.set()
        log.warning("broker %d lost its etcd lease %x: %s", self.broker_id, self.lease_id, reason)
        if self.on_lost is not None:
            self.on_lost(reason)

    async def _keep_alive(self) -> None:
        while True:
            now = time.monotonic()
            await asyncio.sleep(max(0.0, min(self.interval_s, self.valid_until - now)))
            sent = time.monotonic()
            remaining = self.valid_until - sent
            if remaining <= 0:
                self._lose(f"not renewed for {self.ttl_s - self.margin_s:g}s")
                return
            try:
                async with asyncio.timeout(remaining):
                    ttl_s = await self.etcd.keepalive(self.lease_id)
            except LeaseNotFound:
                self._lose("etcd says it has expired")
                return
            except (EtcdError, TimeoutError) as exc:
                log.warning("broker %d could not renew its etcd lease: %s", self.broker_id, exc)
                continue
            self._renewed(sent, ttl_s)
