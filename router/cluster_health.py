"""Under-replicated and offline partitions, from a replicated cluster's ``GET /v1/cluster``.

Shared by ``shoal cluster info`` and the gateway's ``GET /v1/cluster``. A partition is
*under-replicated* while its ISR is smaller than its replicas (a replica is down or
behind: one more failure may cost availability), and *offline* while nobody serves it:
it has no leader, or its leader is not among the brokers that answer. These are Kafka's
UnderReplicatedPartitions and OfflinePartitionsCount; a static cluster (no
``partitions`` in the body) has neither.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from shoal.router.console.replicas import partition_states


def partition_health(cluster: dict[str, Any], up: Iterable[int]) -> dict[str, list[dict[str, Any]]] | None:
    """``{"under_replicated": [...], "offline": [...]}``, each a list of ``{"topic",
    "partition", "leader", "leader_epoch", "replicas", "isr"}`` in topic and partition
    order; None for a static cluster. ``up``: the ids of the brokers that answer."""
    if "partitions" not in cluster:
        return None
    up = set(up)
    under, offline = [], []
    for topic in sorted(cluster["topics"]):
        for p, state in enumerate(partition_states(cluster, topic)):
            row = {"topic": topic, "partition": p, **state}
            if state["leader"] is None or state["leader"] not in up:
                offline.append(row)
            if len(state["isr"]) < len(state["replicas"]):
                under.append(row)
    return {"under_replicated": under, "offline": offline}
