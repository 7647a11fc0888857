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

Renewals are sent by a thread of their own over their own HTTP connection
(``BlockingEtcd``), not by the event loop: a loop busy for a second or two (parsing
the states of 10,000 partitions, say) must not cost the broker its registration. The
thread renews only while the loop is alive: the loop stamps ``_loop_tick`` every
``_TICK_S``, and once it has not done so for ``loop_guard_s`` (the TTL) the thread
stops renewing and declares the lease lost, so a broker whose loop is wedged (a
blocking call, an endless callback) still loses its key at most ``loop_guard_s`` +
TTL after its loop last ran, and its partitions are led elsewhere. ``valid_until``
keeps its meaning whichever thread renewed: it is computed from the renewal's send
time on the same monotonic clock, and ``valid()`` on the loop compares against it.
The thread writes ``valid_until`` (one float store, atomic under the GIL) and sets it
to 0 before it reports a loss, so ``valid()`` turns false at once; ``lost`` and
``on_lost`` are then set and called on the event loop.

``valid()``, ``start()`` and ``stop()`` are used from one event loop; the renewing
thread touches only ``valid_until``, ``expires_at`` and ``lost_reason``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable

from shoal.router.metadata.etcd import (
    BlockingEtcd, EtcdClient, EtcdError, LeaseNotFound, mod_revision_is, put_op, range_op,
)

__all__ = ["BrokerLease", "BrokerIdInUse"]

log = logging.getLogger(__name__)

_TICK_S = 0.1  # how often the event loop proves to the renewing thread that it runs


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
        self.loop_guard_s = float(self.ttl_s)  # no renewal once the loop has not run for this long
        self.on_lost = on_lost
        self.lease_id = 0
        self.valid_until = 0.0  # monotonic: act as a live broker only before this
        self.expires_at = 0.0  # monotonic: etcd cannot delete the key before this
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_tick = 0.0  # monotonic: when the event loop last ran _tick
        self._ticker: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

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
        if self._thread is not None and self._thread.is_alive() and not self.lost.is_set():
            return
        await self._join()
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
        self._loop = asyncio.get_running_loop()
        self._tick()
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._keep_alive, args=(lease, self._stopping), name=f"etcd-lease-broker-{self.broker_id}", daemon=True
        )
        self._thread.start()
        log.info("broker %d registered in etcd with lease %x (ttl %ds)", self.broker_id, lease, self.ttl_s)

    async def stop(self) -> None:
        """Stop renewing and revoke the lease (the key goes at once)."""
        await self._join()
        if self.lease_id and not self.lost.is_set():
            try:
                await self.etcd.revoke(self.lease_id)
            except EtcdError as exc:
                log.warning("could not revoke lease %x of broker %d: %s (it expires by itself)", self.lease_id, self.broker_id, exc)
        self.lease_id = 0
        self.valid_until = 0.0

    async def _join(self) -> None:
        """Stop the renewing thread and the loop's ticks (a renewal in flight ends within its timeout)."""
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self._thread is not None:
            self._stopping.set()
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    def _tick(self) -> None:
        self._loop_tick = time.monotonic()
        assert self._loop is not None
        self._ticker = self._loop.call_later(_TICK_S, self._tick)

    def _lose(self, reason: str) -> None:
        """On the renewing thread: stop acting as live now, and tell the event loop."""
        self.valid_until = 0.0
        self.lost_reason = reason
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._report_lost, reason)
        except RuntimeError:  # the loop is closed: nobody left to tell
            pass

    def _report_lost(self, reason: str) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        self.valid_until = 0.0
        self.lost.set()
        log.warning("broker %d lost its etcd lease %x: %s", self.broker_id, self.lease_id, reason)
        if self.on_lost is not None:
            self.on_lost(reason)

    def _keep_alive(self, lease: int, stopping: threading.Event) -> None:
        """The renewing thread: one keepalive every ``interval_s`` on its own connection."""
        etcd = BlockingEtcd(self.etcd.endpoints, tls=self.etcd.tls, request_timeout_s=self.etcd.request_timeout_s)
        try:
            while not stopping.wait(max(0.0, min(self.interval_s, self.valid_until - time.monotonic()))):
                sent = time.monotonic()
                remaining = self.valid_until - sent
                if remaining <= 0:
                    return self._lose(f"not renewed for {self.ttl_s - self.margin_s:g}s")
                stalled = sent - self._loop_tick
                if stalled >= self.loop_guard_s:
                    return self._lose(f"the event loop has not run for {stalled:.1f}s: renewals stopped")
                try:
                    ttl_s = etcd.keepalive(lease, timeout_s=remaining)
                except LeaseNotFound:
                    return self._lose("etcd says it has expired")
                except EtcdError as exc:
                    log.warning("broker %d could not renew its etcd lease: %s", self.broker_id, exc)
                    continue
                if not stopping.is_set():
                    self._renewed(sent, ttl_s)
        except Exception:  # noqa: BLE001 - a dead renewer must not fail silently
            log.exception("broker %d: the lease renewer failed", self.broker_id)
            self._lose("the lease renewer failed")
        finally:
            etcd.close()
