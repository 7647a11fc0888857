"""The cluster's metadata in etcd: applied topology, live brokers, partition states.

Key layout, under ``/shoal/<cluster>/`` (values are JSON, readable with ``etcdctl``):

- ``topology``: the applied topology (``Topology.to_dict()``); replaced only by a
  higher epoch, by compare-and-swap on the ``mod_revision`` read.
- ``brokers/<id>``: ``{"id", "url"}``, attached to the broker's lease
  (``router.metadata.lease``): present exactly while the broker is live.
- ``partitions/<topic>/<partition>``: ``{"replicas", "leader", "leader_epoch", "isr"}``
  and, while it moves, ``"adding"``/``"removing"`` (``router.metadata.partition``),
  created once and then changed only by compare-and-swap on the ``mod_revision`` the
  change was computed from.
- ``drained``: ``[ids]``, the brokers ``shoal broker drain`` emptied; placement leaves
  them out (``router.reassign.placement``).
- ``throttle``: bytes/s a leader may send to the replicas it is adding (absent: no limit).

Every change is computed from a read and written with a transaction that compares the
read's ``mod_revision``: if anything wrote the key in between, the transaction fails,
nothing is written, and the caller gets the fresh state to decide again. This is how
Kafka's KRaft controller guards ISR changes with the partition epoch.

Task-safe: every method is one or a few independent etcd requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass

from shoal.router.internal_topics import placed_topics
from shoal.client.structs import TopicPartition
from shoal.router.metadata.etcd import EtcdClient, WatchEvent, mod_revision_is, put_op, range_op
from shoal.router.metadata.partition import (
    PartitionState, TransitionError, elect, expand_isr, finish_reassignment, hand_off, initial_state, reassign, shrink_isr,
)
from shoal.router.reassign.placement import target_replicas
from shoal.router.topology import Topology

__all__ = ["MetadataStore", "StaleTopology", "PartitionChange", "cluster_prefix"]

log = logging.getLogger(__name__)

# Concurrent creation transactions while creating partitions (etcd serialises them anyway).
_CREATE_CONCURRENCY = 32
# Partitions created per transaction (etcd allows 128 operations in one by default).
_CREATE_BATCH = 64


class StaleTopology(ValueError):
    """etcd already holds this epoch with other content, or a higher epoch."""


def cluster_prefix(cluster: str) -> bytes:
    """Where cluster ``cluster`` keeps its keys."""
    return f"/shoal/{cluster}/".encode()


@dataclass(frozen=True)
class PartitionChange:
    """A partition's new state as a watch saw it (``state`` None: the key was deleted)."""

    partition: TopicPartition
    state: PartitionState | None
    revision: int


class MetadataStore:
    """Reads and changes one cluster's metadata in etcd.

    Args:
        etcd: a started client.
        cluster: the cluster name (``Topology.cluster``); keys live under ``/shoal/<cluster>/``.
    """

    def __init__(self, etcd: EtcdClient, cluster: str):
        self.etcd = etcd
        self.prefix = cluster_prefix(cluster)
        self._partitions = self.prefix + b"partitions/"
        self._brokers = self.prefix + b"brokers/"

    # -- topology ------------------------------------------------------------

    async def topology(self) -> Topology | None:
        """The applied topology, or None before the first apply."""
        kv = await self.etcd.get(self.prefix + b"topology")
        return Topology.from_dict(json.loads(kv.value), source="etcd") if kv else None

    async def apply_topology(self, topology: Topology) -> bool:
        """Store ``topology`` if its epoch is higher than the stored one.

        Returns:
            True if written, False if this very topology was already applied.

        Raises:
            StaleTopology: etcd holds a higher epoch, or this epoch with other content.
        """
        key = self.prefix + b"topology"
        body = topology.to_dict()
        value = json.dumps(body, sort_keys=True).encode()
        while True:
            kv = await self.etcd.get(key)
            if kv is not None:
                stored = json.loads(kv.value)
                if stored == body:
                    return False
                if stored["epoch"] >= topology.epoch:
                    raise StaleTopology(
                        f"etcd holds epoch {stored['epoch']}; apply a higher epoch than that, not {topology.epoch}"
                    )
            result = await self.etcd.txn([mod_revision_is(key, kv.mod_revision if kv else 0)], [put_op(key, value)])
            if result.succeeded:
                log.info("applied topology epoch %d of cluster %s to etcd", topology.epoch, topology.cluster)
                return True
            # Someone applied in between: look again.

    # -- brokers -------------------------------------------------------------

    async def live_brokers(self) -> tuple[dict[int, str], int]:
        """The registered (live) brokers, id -> URL, and the revision read at."""
        kvs, revision = await self.etcd.range(self._brokers)
        return {int(kv.key[len(self._brokers) :]): json.loads(kv.value)["url"] for kv in kvs}, revision

    # -- partitions ----------------------------------------------------------

    def _key(self, tp: TopicPartition) -> bytes:
        return self._partitions + f"{tp.topic}/{tp.partition}".encode()

    def _tp(self, key: bytes) -> TopicPartition:
        topic, _, partition = key[len(self._partitions) :].decode().rpartition("/")
        return TopicPartition(topic, int(partition))

    async def partition(self, tp: TopicPartition) -> PartitionState | None:
        """The stored state of ``tp``, with the ``mod_revision`` to compare against."""
        kv = await self.etcd.get(self._key(tp))
        return PartitionState.from_json(kv.value, kv.mod_revision) if kv else None

    async def partitions(self) -> tuple[dict[TopicPartition, PartitionState], int]:
        """Every stored partition state, and the revision read at (watch from it + 1)."""
        kvs, revision = await self.etcd.range(self._partitions)
        return {self._tp(kv.key): PartitionState.from_json(kv.value, kv.mod_revision) for kv in kvs}, revision

    async def create_partitions(self, topology: Topology) -> list[TopicPartition]:
        """Create the state of every partition of ``topology`` that has none yet:
        replicas from the rendezvous ranking, the preferred leader leading at epoch 0,
        every replica in sync. Existing states are left alone. Returns those created."""
        wanted = [TopicPartition(name, p) for name in sorted(topology.topics) for p in range(topology.topics[name].partitions)]
        limit = asyncio.Semaphore(_CREATE_CONCURRENCY)
        drained, _ = await self.drained()
        drained &= set(topology.broker_ids)

        async def create(tps: list[TopicPartition]) -> list[TopicPartition]:
            """All of ``tps`` in one transaction (one etcd commit); when some exist by now,
            the same transaction reads them, and the others are created again."""
            keys = [self._key(tp) for tp in tps]
            puts = [put_op(k, initial_state(target_replicas(topology, tp, drained)).to_json()) for k, tp in zip(keys, tps)]
            async with limit:
                result = await self.etcd.txn([mod_revision_is(k, 0) for k in keys], puts, [range_op(k) for k in keys])
            if result.succeeded:
                return tps
            missing = [tp for tp, found in zip(tps, result.ranges) if not found]
            return await create(missing) if missing else []

        chunks = [wanted[i : i + _CREATE_BATCH] for i in range(0, len(wanted), _CREATE_BATCH)]
        return [tp for created in await asyncio.gather(*(create(c) for c in chunks)) for tp in created]

    async def compare_and_set(self, tp: TopicPartition, expected: PartitionState, new: PartitionState) -> PartitionState | None:
        """Write ``new`` if ``tp`` is still at ``expected.mod_revision``.

        Returns:
            The stored state (with its new ``mod_revision``), or None when another write
            came first (nothing was written; read again and decide again).
        """
        key = self._key(tp)
        result = await self.etcd.txn([mod_revision_is(key, expected.mod_revision)], [put_op(key, new.to_json()), range_op(key)])
        if not result.succeeded:
            return None
        kv = result.ranges[0][0]
        return PartitionState.from_json(kv.value, kv.mod_revision)

    async def _transition(
        self, tp: TopicPartition, change: Callable[[PartitionState], PartitionState], expected: PartitionState | None
    ) -> PartitionState:
        """Apply ``change`` to the state read (or to ``expected``), by compare-and-swap.

        With ``expected`` given, a concurrent write makes it fail; without, the change is
        recomputed from a fresh read until it applies or is refused.

        Raises:
            TransitionError: the change is refused, the write lost a race, or ``tp`` has no state.
        """
        while True:
            state = expected or await self.partition(tp)
            if state is None:
                raise TransitionError(f"{tp.topic}/{tp.partition} has no state in etcd")
            stored = await self.compare_and_set(tp, state, change(state))
            if stored is not None:
                return stored
            if expected is not None:
                raise TransitionError(f"{tp.topic}/{tp.partition} changed since revision {expected.mod_revision}")

    async def elect_leader(
        self, tp: TopicPartition, candidate: int, live: Collection[int], *, unclean: bool = False
    ) -> PartitionState:
        """``candidate`` takes over ``tp`` from a leader that is not live, in one
        transaction (``partition.elect``: leader epoch + 1, ISR without the old leader).

        Raises:
            TransitionError: the leader is live, ``candidate`` may not lead, or no state.
        """
        stored = await self._transition(tp, lambda s: elect(s, candidate, live, unclean=unclean), None)
        log.info("broker %d leads %s/%d at epoch %d, isr %s", candidate, tp.topic, tp.partition, stored.leader_epoch, list(stored.isr))
        return stored

    async def shrink_isr(self, tp: TopicPartition, expected: PartitionState, follower: int) -> PartitionState:
        """The leader of ``expected`` drops ``follower`` from the ISR.

        Raises:
            TransitionError: refused (see ``partition.shrink_isr``) or ``tp`` changed since ``expected``.
        """
        return await self._transition(tp, lambda s: shrink_isr(s, expected.leader, expected.leader_epoch, follower), expected)

    async def expand_isr(self, tp: TopicPartition, expected: PartitionState, follower: int) -> PartitionState:
        """The leader of ``expected`` adds a caught-up ``follower`` to the ISR.

        Raises:
            TransitionError: refused (see ``partition.expand_isr``) or ``tp`` changed since ``expected``.
        """
        return await self._transition(tp, lambda s: expand_isr(s, expected.leader, expected.leader_epoch, follower), expected)

    async def hand_off(self, tp: TopicPartition, expected: PartitionState, successor: int) -> PartitionState:
        """The leader of ``expected`` gives ``tp`` to ``successor`` (``partition.hand_off``).

        Raises:
            TransitionError: refused, or ``tp`` changed since ``expected``.
        """
        return await self._transition(tp, lambda s: hand_off(s, expected.leader, expected.leader_epoch, successor), expected)

    async def finish_reassignment(self, tp: TopicPartition, expected: PartitionState) -> PartitionState:
        """The leader of ``expected`` drops the removed replicas (``partition.finish_reassignment``).

        Raises:
            TransitionError: refused, or ``tp`` changed since ``expected``.
        """
        return await self._transition(tp, lambda s: finish_reassignment(s, expected.leader, expected.leader_epoch), expected)

    # -- reassignment ----------------------------------------------------------

    async def drained(self) -> tuple[set[int], int]:
        """The drained broker ids, and the key's ``mod_revision`` (0: none drained yet)."""
        kv = await self.etcd.get(self.prefix + b"drained")
        return (set(json.loads(kv.value)), kv.mod_revision) if kv else (set(), 0)

    async def set_drained(self, ids: Collection[int], expected_revision: int) -> bool:
        """Store the drained set if the key is still at ``expected_revision``."""
        key = self.prefix + b"drained"
        value = json.dumps(sorted(ids)).encode()
        result = await self.etcd.txn([mod_revision_is(key, expected_revision)], [put_op(key, value)])
        return result.succeeded

    async def throttle(self) -> int | None:
        """The reassignment throttle in bytes/s, or None for no limit."""
        kv = await self.etcd.get(self.prefix + b"throttle")
        return int(json.loads(kv.value)) if kv else None

    async def set_throttle(self, rate: int | None) -> None:
        """Set (or with None remove) the reassignment throttle."""
        if rate is None:
            await self.etcd.delete(self.prefix + b"throttle")
        else:
            await self.etcd.put(self.prefix + b"throttle", json.dumps(rate).encode())

    async def reassign_all(self, topology: Topology) -> dict[TopicPartition, PartitionState]:
        """Give every partition whose replica set is not where ``topology`` and the
        drained set place it that target (``partition.reassign``); the partitions' leaders
        carry the moves out. Returns the partitions whose target changed.

        Each write compares the partition's, the topology's and the drained set's
        revisions, so a target is never computed from a topology or drained set that
        changed meanwhile; writing the same targets again changes nothing.

        Raises:
            StaleTopology: etcd holds another topology than ``topology``, or the topology
                or drained set changed while the targets were written (apply again).
            PlacementError: too few undrained brokers for a replication factor.
        """
        topo_key, drained_key = self.prefix + b"topology", self.prefix + b"drained"
        kv = await self.etcd.get(topo_key)
        if kv is None or json.loads(kv.value) != topology.to_dict():
            raise StaleTopology(f"etcd does not hold epoch {topology.epoch} of {topology.source}: install it first")
        drained, drained_rev = await self.drained()
        drained &= set(topology.broker_ids)
        guards = [mod_revision_is(topo_key, kv.mod_revision), mod_revision_is(drained_key, drained_rev)]
        placing = placed_topics(topology)  # __consumer_offsets moves like a declared topic
        states, _ = await self.partitions()
        changed = {}
        for tp, state in sorted(states.items()):
            if tp.topic not in placing.topics or tp.partition >= placing.topics[tp.topic].partitions:
                continue
            target = target_replicas(placing, tp, drained)
            while state.target != target:
                new = reassign(state, target)
                result = await self.etcd.txn(
                    [*guards, mod_revision_is(self._key(tp), state.mod_revision)],
                    [put_op(self._key(tp), new.to_json()), range_op(self._key(tp))],
                )
                if result.succeeded:
                    kv_new = result.ranges[0][0]
                    changed[tp] = PartitionState.from_json(kv_new.value, kv_new.mod_revision)
                    break
                state = await self.partition(tp)
                if state is None or await self._guards_moved(kv.mod_revision, drained_rev):
                    raise StaleTopology("the topology or the drained brokers changed meanwhile: apply again")
        if changed:
            log.info("reassigning %d partitions of cluster %s (epoch %d)", len(changed), topology.cluster, topology.epoch)
        return changed

    async def _guards_moved(self, topology_rev: int, drained_rev: int) -> bool:
        kv = await self.etcd.get(self.prefix + b"topology")
        _, now = await self.drained()
        return kv is None or kv.mod_revision != topology_rev or now != drained_rev

    async def take_over(self, me: int, live: Collection[int], topology: Topology) -> list[tuple[TopicPartition, PartitionState]]:
        """Elect ``me`` for every partition whose leader is not live and that ``me`` may
        lead (per the topic's ``unclean_leader_election``). Losing a race to another
        candidate is fine: that partition has a leader again. Returns what ``me`` won."""
        states, _ = await self.partitions()
        todo = []
        for tp, state in states.items():
            if state.leader in live or me not in state.replicas or tp.topic not in topology.topics:
                continue
            unclean = topology.topics[tp.topic].unclean_leader_election
            try:
                todo.append((tp, state, elect(state, me, live, unclean=unclean)))
            except TransitionError:
                continue
        # Many per transaction and many transactions at a time, as in create_partitions:
        # one compare-and-swap per partition, a broker that led thousands of partitions
        # took minutes to replace (one etcd commit each).
        limit = asyncio.Semaphore(_CREATE_CONCURRENCY)

        async def batch(jobs: list[tuple[TopicPartition, PartitionState, PartitionState]]) -> list[tuple[TopicPartition, PartitionState]]:
            """All of ``jobs`` in one transaction; when some partition changed meanwhile (a
            racing candidate won it), the same transaction reads them all, and the
            unchanged ones are tried again without it."""
            keys = [self._key(tp) for tp, _, _ in jobs]
            compare = [mod_revision_is(k, state.mod_revision) for k, (_, state, _) in zip(keys, jobs)]
            puts = [put_op(k, new.to_json()) for k, (_, _, new) in zip(keys, jobs)]
            reads = [range_op(k) for k in keys]
            async with limit:
                result = await self.etcd.txn(compare, puts + reads, reads)
            if result.succeeded:
                return [(tp, PartitionState.from_json(kv[0].value, kv[0].mod_revision)) for (tp, _, _), kv in zip(jobs, result.ranges)]
            untouched = [job for job, kv in zip(jobs, result.ranges) if kv and kv[0].mod_revision == job[1].mod_revision]
            return await batch(untouched) if untouched else []

        chunks = [todo[i : i + _CREATE_BATCH] for i in range(0, len(todo), _CREATE_BATCH)]
        return [won for chunk in await asyncio.gather(*(batch(c) for c in chunks)) for won in chunk]

    async def watch_partitions(self, start_revision: int) -> AsyncIterator[PartitionChange]:
        """Every change of a partition state from ``start_revision`` on, in order.

        Raises:
            WatchCompacted: ``start_revision`` is too old: read ``partitions()`` again.
        """
        async for events in self.etcd.watch(self._partitions, start_revision=start_revision):
            for event in events:
                yield self._change(event)

    def _change(self, event: WatchEvent) -> PartitionChange:
        state = PartitionState.from_json(event.kv.value, event.kv.mod_revision) if event.type == "PUT" else None
        return PartitionChange(self._tp(event.kv.key), state, event.kv.mod_revision)

    async def watch_brokers(self, start_revision: int) -> AsyncIterator[tuple[int, bool]]:
        """``(broker id, live)`` for every registration and expiry from ``start_revision`` on."""
        async for events in self.etcd.watch(self._brokers, start_revision=start_revision):
            for event in events:
                yield int(event.kv.key[len(self._brokers) :]), event.type == "PUT"
