"""Leader, replicas and ISR of each partition, read from a ``GET /v1/cluster`` body.

Replicated clusters add per partition ``leader``, ``leader_epoch``, ``replicas`` and
``isr`` under ``"partitions": {topic: [state of partition 0, 1, ...]}`` (each state may
also name its ``"partition"``, and the topic's entry may be keyed by partition number).
A cluster without them (static mode, replication factor 1) has one replica per
partition, its owner: leader = owner, replicas = isr = [owner], leader epoch 0.
"""

from __future__ import annotations


def partition_states(cluster: dict, topic: str) -> list[dict]:
    """``[{"leader", "leader_epoch", "replicas", "isr"}]`` for partitions 0..n-1 of ``topic``.

    ``leader`` is None while a partition has no leader (an election under way).
    """
    count = cluster["topics"][topic]["partitions"]
    owners = cluster.get("owners", {}).get(topic) or [None] * count
    given = _given(cluster.get("partitions", {}).get(topic))
    out = []
    for p in range(count):
        state = given.get(p)
        if state is None:
            owner = owners[p] if p < len(owners) else None
            members = [] if owner is None else [owner]
            out.append({"leader": owner, "leader_epoch": 0, "replicas": members, "isr": list(members)})
        else:
            replicas = list(state.get("replicas") or [])
            out.append({
                "leader": state.get("leader"),
                "leader_epoch": state.get("leader_epoch", 0),
                "replicas": replicas,
                "isr": list(state.get("isr", replicas)),
            })
    return out


def _given(states) -> dict[int, dict]:
    if isinstance(states, list):
        return {s.get("partition", i): s for i, s in enumerate(states) if isinstance(s, dict)}
    if isinstance(states, dict):
        return {int(k): s for k, s in states.items() if str(k).isdigit() and isinstance(s, dict)}
    return {}


def replication_factor(cluster: dict, topic: str, states: list[dict]) -> int:
    """The topic's configured factor, else the replica count of its partition 0."""
    configured = cluster["topics"][topic].get("replication_factor")
    if isinstance(configured, int):
        return configured
    return len(states[0]["replicas"]) if states else 0
