"""Internal topics of a replicated cluster, placed like declared ones: ``__consumer_offsets``.

The committed offsets of a replicated cluster are records of this topic (its records and
its coordinators are the broker's business: ``broker/replication/offsets_topic.py``).
What the router needs is its shape: etcd holds its partition states beside the declared
topics', and reassignment places and moves it like them. It is not part of the declared
topology: ``GET /v1/cluster`` and ``shoal topology`` do not show it, and names starting
with ``__`` are refused in cluster.yaml.
"""

from __future__ import annotations

import dataclasses

from shoal.router.topology import TopicConfig, Topology

OFFSETS_TOPIC = "__consumer_offsets"
PARTITIONS = 8  # fixed for good: a group's partition is its hash modulo this (Kafka: offsets.topic.num.partitions)
MAX_FACTOR = 3
MAX_SEGMENT_BYTES = 16 * 1024 * 1024


def offsets_topic_config(topology: Topology) -> TopicConfig:
    """``min(3, brokers)`` replicas, ``min_insync_replicas`` of the defaults (at most the
    factor), never an unclean election, no retention (snapshots bound it instead)."""
    factor = min(MAX_FACTOR, len(topology.brokers))
    d = topology.defaults
    return TopicConfig(
        partitions=PARTITIONS,
        flush=d.flush,
        flush_interval_ms=d.flush_interval_ms,
        segment_bytes=min(d.segment_bytes, MAX_SEGMENT_BYTES),
        retention_ms=None,
        retention_bytes=None,
        replication_factor=factor,
        min_insync_replicas=min(d.min_insync_replicas, factor),
        unclean_leader_election=False,
    )


def with_offsets_topic(topology: Topology) -> Topology:
    """``topology`` plus the offsets topic, when replicated (what etcd and the replicas work from)."""
    return placed_topics(topology) if topology.replicated else topology


def placed_topics(topology: Topology) -> Topology:
    """``topology`` plus the offsets topic, whatever its ``metadata``: what reassignment
    places (the topology in etcd has no ``metadata:`` section, but its cluster is replicated)."""
    if OFFSETS_TOPIC in topology.topics:
        return topology
    return dataclasses.replace(topology, topics={**topology.topics, OFFSETS_TOPIC: offsets_topic_config(topology)})
