"""A broker's membership of a replicated cluster: registered in etcd, partition states mirrored.

With a ``metadata:`` section the broker, next to serving:

- makes sure etcd holds its topology (``MetadataStore.apply_topology``: only a higher
  epoch replaces what is there) and a state for every partition of it
  (``create_partitions``: never overwrites one);
- registers ``brokers/<id>`` with its lease and registers again whenever the lease is
  lost (``BrokerLease``; the loss is logged as an error);
- mirrors every partition state (``partitions()``, then a watch from that revision on),
  which ``GET /v1/cluster`` shows per partition.

etcd may be down or still starting (``shoal cluster up`` starts it beside the brokers):
every step is retried in the background until it succeeds, and the broker serves
meanwhile. Used from the broker's event loop only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from typing import Any

from shoal.client.structs import TopicPartition
from shoal.router.metadata.etcd import EtcdClient, EtcdError
from shoal.router.metadata.lease import BrokerLease
from shoal.router.metadata.partition import PartitionState
from shoal.router.metadata.store import MetadataStore, StaleTopology
from shoal.router.topology import Topology

from shoal.router.internal_topics import with_offsets_topic

log = logging.getLogger(__name__)

RETRY_S = 0.5  # between attempts while etcd is unreachable


class Membership:
    """Keeps broker ``broker_id`` registered in the cluster's etcd and mirrors partition states.

    Args:
        topology: the broker's topology; it must have a ``metadata`` section.
    """

    def __init__(self, topology: Topology, broker_id: int):
        metadata = topology.metadata
        if metadata is None:
            raise ValueError("the topology has no metadata: section")
        self.declared = topology  # what etcd's topology key holds
        self.topology = with_offsets_topic(topology)  # plus __consumer_offsets: what the replicas serve
        self.broker_id = broker_id
        self.etcd = EtcdClient(metadata.etcd, tls=metadata.tls)
        self.store = MetadataStore(self.etcd, topology.cluster)
        self.lease = BrokerLease(
            self.etcd, self.store.prefix, broker_id, topology.broker(broker_id).url, metadata.lease_ttl_ms
        )
        self.states: dict[TopicPartition, PartitionState] = {}
        self.on_change: list = []  # called (no arguments) after the mirrored states changed
        # Called with the partitions whose mirrored state changed (None: any may have),
        # so that work per change need not look at every partition.
        self.on_partitions_change: list[Callable[[Collection[TopicPartition] | None], None]] = []
        self.registered = asyncio.Event()
        self.applied = asyncio.Event()  # set once etcd holds the current topology's partitions
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        await self.etcd.start()
        self._tasks = [
            asyncio.create_task(self._apply(), name="etcd-apply-topology"),
            asyncio.create_task(self._register(), name="etcd-register"),
            asyncio.create_task(self._mirror(), name="etcd-mirror-partitions"),
        ]

    async def stop(self) -> None:
        """Stop the background work and deregister (the broker's key goes at once)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.lease.stop()
        await self.etcd.close()

    def update(self, topology: Topology) -> None:
        """A newer topology was installed: make sure etcd holds it and its new partitions."""
        self.declared = topology
        self.topology = with_offsets_topic(topology)
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(asyncio.create_task(self._apply(), name="etcd-apply-topology"))

    def view(self, topology: Topology) -> dict[str, list[dict[str, Any] | None]]:
        """Per topic, per partition: leader, leader_epoch, replicas, isr (None: not known yet)."""
        out = {}
        for name in sorted(topology.topics):
            states = (self.states.get(TopicPartition(name, p)) for p in range(topology.topics[name].partitions))
            out[name] = [s.to_dict() if s is not None else None for s in states]
        return out

    def changed(self, partitions: Collection[TopicPartition] | None = None) -> None:
        """The mirrored states of ``partitions`` changed (None: of any partition)."""
        for callback in self.on_change:
            callback()
        for listener in self.on_partitions_change:
            listener(partitions)

    async def _retry(self, what: str, step) -> Any:
        """Run ``step()`` until it does not raise EtcdError, logging the first failure."""
        failures = 0
        while True:
            try:
                return await step()
            except EtcdError as exc:
                failures += 1
                if failures == 1:
                    log.warning("broker %d could not %s in etcd (retrying every %gs): %s", self.broker_id, what, RETRY_S, exc)
                await asyncio.sleep(RETRY_S)

    async def _apply(self) -> None:
        declared, topology = self.declared, self.topology

        async def apply() -> None:
            try:
                await self.store.apply_topology(declared)
            except StaleTopology as exc:
                log.info("etcd keeps its own topology: %s", exc)
            created = await self.store.create_partitions(topology)
            if created:
                log.info("created the state of %d partitions in etcd", len(created))

        await self._retry("store the topology", apply)
        self.applied.set()

    async def _register(self) -> None:
        while True:
            await self._retry("register", self.lease.start)
            self.registered.set()
            await self.lease.lost.wait()
            self.registered.clear()
            log.error("broker %d lost its etcd registration (%s); registering again", self.broker_id, self.lease.lost_reason)

    async def _mirror(self) -> None:
        await self.applied.wait()
        while True:
            states, revision = await self._retry("read the partition states", self.store.partitions)
            self.states = states
            self.changed()
            try:
                async for change in self.store.watch_partitions(revision + 1):
                    if change.state is None:
                        self.states.pop(change.partition, None)
                    else:
                        self.states[change.partition] = change.state
                    self.changed((change.partition,))
            except EtcdError as exc:  # unavailable or compacted: read everything again
                log.warning("broker %d: the partition watch broke (%s); reading again", self.broker_id, exc)
                await asyncio.sleep(RETRY_S)
