"""Metadata: brokers, topics and partition leaders as Kafka clients see them.

Kafka node ids are shoal broker ids. Brokers without a ``kafka:`` address are left out
of the broker list, and a partition whose leader has none, or has no live leader,
reports LEADER_NOT_AVAILABLE. Topics are never created by a Metadata request.
``partition_state`` is the one place where leaders and leader epochs are read, and
``check_leader_epoch`` the one place a client's epoch is judged.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, NamedTuple

from kio.schema.errors import ErrorCode

from shoal.broker.kafka.errors import KafkaError
from shoal.broker.kafka.sasl import DESCRIBE, may
from shoal.client.names import is_valid_name
from shoal.client.structs import TopicPartition
from shoal.router.topology import Topology

if TYPE_CHECKING:
    from shoal.broker.broker import Broker
    from shoal.broker.kafka.listener import Connection

METADATA = 3
_TOPIC_IDS = uuid.UUID("5e0a1b7c-3f1d-4c2a-9b8e-0c6d1f2a3b4c")


class PartitionState(NamedTuple):
    leader: int  # -1: no live leader (an election is under way)
    leader_epoch: int
    replicas: list[int]
    isr: list[int]


def partition_state(broker: Broker, topic: str, partition: int) -> PartitionState:
    """Leader, leader epoch, replicas and ISR of one partition, as this broker knows them.

    Replicated (``metadata:``): the state mirrored from etcd, with leader -1 while the
    named leader is not live. Static: the owner is the leader and the only replica,
    and the leader epoch is the topology epoch (which grows whenever ownership can
    change, so a client holding an older one is told FENCED_LEADER_EPOCH and refreshes).
    """
    topology = broker.topology
    if broker.membership is None:
        owner = topology.owner(topic, partition).id
        return PartitionState(owner, topology.epoch, [owner], [owner])
    state = broker.membership.states.get(TopicPartition(topic, partition))
    if state is None:
        return PartitionState(-1, 0, topology.replicas(topic, partition), [])
    leader = state.leader
    if leader >= 0 and leader != broker.broker_id and leader not in broker.leadership.live:
        leader = -1
    return PartitionState(leader, state.leader_epoch, list(state.replicas), list(state.isr))


def check_leader_epoch(broker: Broker, topic: str, partition: int, epoch: int) -> int:
    """The partition's leader epoch, after checking a client's ``current_leader_epoch``
    (-1: none given): FENCED_LEADER_EPOCH when older, UNKNOWN_LEADER_EPOCH when newer."""
    current = partition_state(broker, topic, partition).leader_epoch
    if epoch >= 0 and epoch < current:
        raise KafkaError(ErrorCode.fenced_leader_epoch)
    if epoch > current:
        raise KafkaError(ErrorCode.unknown_leader_epoch)
    return current


def topic_id(topology: Topology, topic: str) -> uuid.UUID:
    """A stable id per (cluster, topic name), for Metadata versions that carry one."""
    return uuid.uuid5(_TOPIC_IDS, f"{topology.cluster}/{topic}")


def node(topology: Topology, broker_id: int) -> dict | None:
    address = topology.broker(broker_id).kafka_address
    if address is None:
        return None
    return {"node_id": broker_id, "host": address[0], "port": address[1], "rack": None}


def _topic(broker: Broker, name: str) -> dict:
    topology = broker.topology
    config = topology.topics.get(name)
    if config is None:
        code = ErrorCode.unknown_topic_or_partition if is_valid_name(name) else ErrorCode.invalid_topic_exception
        return {"error_code": code, "name": name, "topic_id": uuid.UUID(int=0), "partitions": []}
    partitions = []
    for p in range(config.partitions):
        state = partition_state(broker, name, p)
        reachable = state.leader >= 0 and topology.broker(state.leader).kafka is not None
        partitions.append(
            {
                "error_code": ErrorCode.none if reachable else ErrorCode.leader_not_available,
                "partition_index": p,
                "leader_id": state.leader if reachable else -1,
                "leader_epoch": state.leader_epoch,
                "replica_nodes": state.replicas,
                "isr_nodes": state.isr,
                "offline_replicas": _offline(broker, state.replicas),
            }
        )
    return {"error_code": 0, "name": name, "topic_id": topic_id(topology, name), "partitions": partitions}


def _refused(name: str) -> dict:
    return {"error_code": ErrorCode.topic_authorization_failed, "name": name, "topic_id": uuid.UUID(int=0), "partitions": []}


def _offline(broker: Broker, replicas: list[int]) -> list[int]:
    """Replicas whose broker is not registered in etcd (none in a static cluster)."""
    if broker.leadership is None:
        return []
    live = broker.leadership.live | {broker.broker_id}
    return [r for r in replicas if r not in live]


async def handle_metadata(conn: Connection, request: Any, version: int) -> dict:
    topology = conn.broker.topology
    asked = request.topics
    if asked is None or (version == 0 and not asked):
        names = [name for name in sorted(topology.topics) if may(conn, name, *DESCRIBE)]
    else:
        names = [t.name for t in asked]
    brokers = [n for b in topology.brokers if (n := node(topology, b.id)) is not None]
    return {
        "throttle_time": 0,
        "brokers": brokers,
        "cluster_id": topology.cluster,
        "controller_id": min(n["node_id"] for n in brokers),
        "topics": [_topic(conn.broker, name) if may(conn, name, *DESCRIBE) else _refused(name) for name in names],
    }


APIS = {METADATA: (1, 12, handle_metadata)}
