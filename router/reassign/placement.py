"""Where each partition's replicas belong: the rendezvous ranking of the brokers that
are in the topology and not drained.

``Topology.replicas`` ranks every broker of the file; a drained broker (``shoal broker
drain``) is left out of the ranking, so that removing it from the file afterwards
changes no replica set. Pure, no IO.
"""

from __future__ import annotations

from collections.abc import Collection

from shoal.client.structs import TopicPartition
from shoal.router import hashing
from shoal.router.topology import Topology

__all__ = ["PlacementError", "target_replicas", "targets"]


class PlacementError(ValueError):
    """Too few brokers are left to hold a topic's replication factor."""


def target_replicas(topology: Topology, tp: TopicPartition, drained: Collection[int] = ()) -> tuple[int, ...]:
    """The replica set of ``tp``, preferred leader first, leaving out ``drained``.

    Raises:
        PlacementError: fewer brokers than the topic's replication factor are left.
    """
    factor = topology.topics[tp.topic].replication_factor
    ids = [b for b in topology.broker_ids if b not in drained]
    if len(ids) < factor:
        raise PlacementError(
            f"{tp.topic} needs {factor} replicas but only brokers {ids} are left (drained: {sorted(drained)})"
        )
    return tuple(hashing.rank(tp.topic, tp.partition, ids)[:factor])


def targets(topology: Topology, drained: Collection[int] = ()) -> dict[TopicPartition, tuple[int, ...]]:
    """``target_replicas`` of every partition of ``topology``."""
    return {
        tp: target_replicas(topology, tp, drained)
        for name in sorted(topology.topics)
        for tp in (TopicPartition(name, p) for p in range(topology.topics[name].partitions))
    }
