"""Leader, replicas and ISR of each partition, read from a ``GET /v1/cluster`` body.

Replicated clusters add per partition ``leader``, ``leader_epoch``, ``replicas`` and
``isr`` under ``"partitions": {topic: [state of partition 0, 1, ...]}``; a state is null
while the broker does not know it yet (shown as no leader, no replicas). A cluster
without them (static mode, replication factor 1) has one replica per partition, its
owner: leader = owner, replicas = isr = [owner], leader epoch 0.
"""

from __future__ import annotations


def partition_states(cluster: dict, topic: str) -> list[dict]:
    """``[{"leader", "leader_epoch", "replicas", "isr"}]`` for partitions 0..n-1 of ``topic``.

    ``leader`` is None while a partition has no leader (an election under way).
    """
    count = cluster["topics"][topic]["partitions"]
    owners = cluster.get("owners", {}).get(topic) or [None] * count
    given = cluster.get("partitions", {}).get(topic)
    out = []
    for p in range(count):
        if given is None:
            owner = owners[p] if p < len(owners) else None
            members = [] if owner is None else [owner]
            out.append({"leader": owner, "leader_epoch": 0, "replicas": members, "isr": list(members)})
            continue
        state = given[p] if p < len(given) else None
        if state is None:
            out.append({"leader": None, "leader_epoch": None, "replicas": [], "isr": []})
        else:
            out.append({k: state[k] for k in ("leader", "leader_epoch", "replicas", "isr")})
    return out


def replication_factor(cluster: dict, topic: str, states: list[dict]) -> int:
    """The topic's configured factor, else the replica count of its partition 0."""
    configured = cluster["topics"][topic].get("replication_factor")
    if isinstance(configured, int):
        return configured
    return len(states[0]["replicas"]) if states else 0
