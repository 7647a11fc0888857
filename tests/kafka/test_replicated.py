"""The listener on a replicated cluster (three real brokers, a real etcd): leaders, epochs,
ISR and acks as etcd has them, and a leader SIGKILLed under a confluent-kafka run."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka import TopicPartition as CKTopicPartition
from kio.schema.fetch.v11.request import FetchRequest
from kio.schema.find_coordinator.v3.request import FindCoordinatorRequest
from kio.schema.metadata.v12.request import MetadataRequest
from kio.schema.offset_for_leader_epoch.v4.request import OffsetForLeaderEpochRequest
from kio.schema.produce.v9.request import ProduceRequest

from shoal.broker.kafka.records import as_kafka_batches
from shoal.client.records import encode_batch
from shoal.router.topology import load_topology
from tests.harness import LocalCluster, http_json
from tests.kafka.wire import call

TOPIC, STRICT, SOLO = "orders", "strict", "solo"
TOPICS = {
    TOPIC: 2,
    STRICT: {"partitions": 1, "min_insync_replicas": 3},
    SOLO: {"partitions": 6, "replication_factor": 1, "min_insync_replicas": 1},
}


@pytest.fixture(scope="module")
def replicated(etcd_server, tmp_path_factory):
    """Three brokers with listeners, factor 3, min_insync_replicas 2, 2 s leases."""
    cluster = LocalCluster(
        tmp_path_factory.mktemp("kafka-replicated"), 3, TOPICS, kafka=True, name=f"k-{uuid.uuid4().hex[:10]}",
        metadata={"etcd": [etcd_server.url], "lease_ttl_ms": 2000, "replica_lag_time_max_ms": 2000},
        replication_factor=3, min_insync_replicas=2,
    )
    try:
        cluster.start(timeout=60)
        yield cluster
    finally:
        cluster.stop()


def address(cluster, broker_id: int) -> tuple[str, int]:
    return "127.0.0.1", cluster.kafka_ports[broker_id]


def live(cluster) -> list[int]:
    return [i for i, proc in cluster.procs.items() if proc.poll() is None]


def until(check, timeout: float = 30.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(interval)
    return result


def metadata(cluster, broker_id: int, topic: str) -> list:
    body = call(address(cluster, broker_id), MetadataRequest, {"topics": [{"name": topic}]})
    return sorted(body.topics[0].partitions, key=lambda p: p.partition_index)


def etcd_states(cluster, broker_id: int, topic: str) -> list[dict]:
    return http_json("GET", cluster.url(broker_id) + "/v1/cluster")[1]["partitions"][topic]


def leaders_serving(cluster, topic: str) -> list | None:
    """Each partition's Metadata once every one has a leader that takes acks=all produces."""
    parts = metadata(cluster, live(cluster)[0], topic)
    if any(int(p.error_code) or p.leader_id < 0 for p in parts):
        return None
    for p in parts:
        if int(produce(cluster, p.leader_id, topic, p.partition_index, b"probe").error_code):
            return None
    return parts


def fetch(cluster, broker_id: int, topic: str, partition: int, offset: int, epoch: int):
    return call(address(cluster, broker_id), FetchRequest, {
        "max_wait": 0, "min_bytes": 1, "max_bytes": 1 << 20, "isolation_level": 0,
        "topics": [{"topic": topic, "partitions": [
            {"partition": partition, "current_leader_epoch": epoch, "fetch_offset": offset, "partition_max_bytes": 1 << 20},
        ]}],
    }).responses[0].partitions[0]


def produce(cluster, broker_id: int, topic: str, partition: int, value: bytes, *, acks: int = -1):
    return call(address(cluster, broker_id), ProduceRequest, {
        "acks": acks, "timeout": 10_000,
        "topic_data": [{"name": topic, "partition_data": [
            {"index": partition, "records": as_kafka_batches(encode_batch([(None, value, None, 1)]))},
        ]}],
    }, timeout=30).responses[0].partition_responses[0]


def test_metadata_fetch_and_epochs_follow_etcd(replicated):
    until(lambda: leaders_serving(replicated, TOPIC))

    def agreeing():
        """Metadata as the state in etcd has it (once no ISR change falls between the two reads)."""
        parts = metadata(replicated, 1, TOPIC)
        states = etcd_states(replicated, 1, TOPIC)
        same = [(p.leader_id, p.leader_epoch, sorted(p.replica_nodes), sorted(p.isr_nodes)) for p in parts] == [
            (s["leader"], s["leader_epoch"], sorted(s["replicas"]), sorted(s["isr"])) for s in states
        ]
        return same and parts

    parts = until(agreeing)
    assert all(len(p.replica_nodes) == 3 and not p.offline_replicas for p in parts)
    leader, epoch = parts[0].leader_id, parts[0].leader_epoch
    follower = next(i for i in (1, 2, 3) if i != leader)
    # the follower has the records too, but only the leader serves them
    assert int(fetch(replicated, follower, TOPIC, 0, 0, epoch).error_code) == 6  # NOT_LEADER_OR_FOLLOWER
    assert int(fetch(replicated, leader, TOPIC, 0, 0, epoch + 1).error_code) == 75  # UNKNOWN_LEADER_EPOCH
    answer = fetch(replicated, leader, TOPIC, 0, 0, epoch)
    assert int(answer.error_code) == 0 and answer.high_watermark >= 1 and answer.records
    body = call(address(replicated, leader), OffsetForLeaderEpochRequest, {
        "replica_id": -1, "topics": [{"topic": TOPIC, "partitions": [
            {"partition": 0, "current_leader_epoch": epoch, "leader_epoch": epoch},
            {"partition": 0, "current_leader_epoch": epoch + 1, "leader_epoch": epoch},
        ]}],
    }).topics[0].partitions
    assert (int(body[0].error_code), body[0].leader_epoch, body[0].end_offset) == (0, epoch, answer.high_watermark)
    assert int(body[1].error_code) == 75


def fresh_group(cluster, avoid: int) -> str:
    """A group name whose coordinator is not broker ``avoid``."""
    for i in range(100):
        group = f"failover-{i}"
        found = call(address(cluster, live(cluster)[0]), FindCoordinatorRequest, {"key": group, "key_type": 0})
        if found.node_id not in (avoid, -1):
            return group
    raise AssertionError("every group lands on the broker to kill")


def test_a_leader_killed_under_an_idempotent_producer_and_a_group_loses_and_repeats_nothing(replicated):
    parts = until(lambda: leaders_serving(replicated, TOPIC))
    victim = parts[0].leader_id
    group = fresh_group(replicated, victim)
    acked: dict[bytes, tuple[int, int]] = {}
    failed: list = []

    def delivered(err, msg):
        if err is None:
            acked[msg.value()] = (msg.partition(), msg.offset())
        else:
            failed.append(err)

    consumed: list[tuple[bytes, int, int]] = []
    committed: list[int] = []
    done = threading.Event()

    def consume():
        consumer = Consumer({
            "bootstrap.servers": replicated.bootstrap, "group.id": group, "auto.offset.reset": "earliest",
            "enable.auto.commit": False, "topic.metadata.refresh.interval.ms": 1000,
        })
        consumer.subscribe([TOPIC])
        try:
            while not done.is_set():
                msg = consumer.poll(0.2)
                if msg is not None and msg.error() is None and msg.value() != b"probe":
                    consumed.append((msg.value(), msg.partition(), msg.offset()))
            consumer.commit(asynchronous=False)
            committed.extend(tp.offset for tp in consumer.committed([CKTopicPartition(TOPIC, p) for p in (0, 1)], timeout=20))
        except Exception as exc:  # noqa: BLE001 - the test reports it
            committed.append(exc)
        finally:
            consumer.close()

    reader = threading.Thread(target=consume)
    reader.start()
    producer = Producer({
        "bootstrap.servers": replicated.bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 5,
        "message.timeout.ms": 60_000, "topic.metadata.refresh.interval.ms": 1000,
    })
    try:
        sent = 0
        killed_at = None
        while killed_at is None or time.monotonic() < killed_at + 1 or len(acked) < sent - 50:
            for _ in range(10):
                producer.produce(TOPIC, value=f"r{sent}".encode(), key=f"k{sent}".encode(), on_delivery=delivered)
                sent += 1
            producer.poll(0.02)
            if killed_at is None and len(acked) >= 150:
                replicated.kill(victim)
                killed_at = time.monotonic()
            assert sent < 20_000, f"acknowledgements stopped after the kill at {len(acked)} of {sent}"
        assert producer.flush(60) == 0
        assert not failed, failed[:3]
        until(lambda: {v for v, _, _ in consumed} >= set(acked), timeout=60)
    finally:
        done.set()
        reader.join(60)
    assert len(acked) == sent
    values = [v for v, _, _ in consumed]
    assert len(values) == len(set(values)), "a record was consumed twice"
    assert set(values) == set(acked)
    # each at the offset its producer was told; librdkafka reports no offset for a retried
    # batch the leader already had beyond the last five it keeps (DUPLICATE_SEQUENCE_NUMBER)
    assert {v: (p, o) for v, p, o in consumed if acked[v][1] is not None} == {
        v: po for v, po in acked.items() if po[1] is not None
    }
    ends = [1 + max(o for _, p, o in consumed if p == partition) for partition in (0, 1)]
    assert committed == ends
    new = until(lambda: (s := etcd_states(replicated, live(replicated)[0], TOPIC)[0])["leader"] not in (-1, victim) and s)
    assert new["leader_epoch"] > parts[0].leader_epoch and victim not in new["isr"]


def partition_leader(cluster, partition: int) -> int | None:
    leader = etcd_states(cluster, live(cluster)[0], TOPIC)[partition]["leader"]
    return leader if leader in live(cluster) else None


def committed_over_http(cluster, group: str, partition: int) -> tuple[int | None, str] | None:
    """Asked of the partition's leader (which serves the partition's offset resource)."""
    leader = partition_leader(cluster, partition)
    try:
        status, body = http_json("GET", f"{cluster.url(leader)}/v1/groups/{group}/topics/{TOPIC}/partitions/{partition}/offset")
    except (OSError, TypeError):
        return None
    return (body["offset"], body.get("metadata") or "") if status == 200 else None


def committed_over_kafka(cluster, group: str) -> list[int] | None:
    """The group's committed offsets of both partitions (not their metadata: confluent-kafka
    sends a string's NUL terminator with it and reads it back as a C string)."""
    consumer = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        found = consumer.committed([CKTopicPartition(TOPIC, p) for p in (0, 1)], timeout=10)
    except Exception:  # noqa: BLE001 - a coordinator still moving: asked again
        return None
    finally:
        consumer.close()
    return [tp.offset for tp in found]


def test_committed_offsets_are_one_namespace_over_both_protocols_and_survive_the_coordinator(replicated):
    for broker_id in (1, 2, 3):  # the test before killed a leader
        if broker_id not in live(replicated):
            replicated.start(broker_id, timeout=60)
    until(lambda: leaders_serving(replicated, TOPIC), timeout=60)
    group = f"both-{uuid.uuid4().hex[:8]}"
    coordinator = until(lambda: (n := call(address(replicated, 1), FindCoordinatorRequest, {"key": group, "key_type": 0}).node_id) >= 0 and n)
    # committed over Kafka, read over HTTP
    consumer = Consumer({"bootstrap.servers": replicated.bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[CKTopicPartition(TOPIC, 0, 1)], asynchronous=False)
    finally:
        consumer.close()
    assert until(lambda: committed_over_http(replicated, group, 0)) == (1, "")
    # committed over HTTP, read over Kafka
    url = f"{replicated.url(partition_leader(replicated, 1))}/v1/groups/{group}/topics/{TOPIC}/partitions/1/offset"
    assert http_json("PUT", url, {"offset": 1, "metadata": "http"})[0] == 200
    assert until(lambda: committed_over_kafka(replicated, group)) == [1, 1]
    # the coordinator SIGKILLed: the new leader of the group's offsets partition has both
    replicated.kill(coordinator)
    assert until(lambda: committed_over_kafka(replicated, group), timeout=60) == [1, 1]
    assert until(lambda: committed_over_http(replicated, group, 0), timeout=30) == (1, "")
    assert until(lambda: committed_over_http(replicated, group, 1), timeout=30) == (1, "http")
    moved = call(address(replicated, live(replicated)[0]), FindCoordinatorRequest, {"key": group, "key_type": 0}).node_id
    assert moved not in (coordinator, -1)


def test_acks_all_needs_min_insync_replicas_and_a_partition_without_a_live_replica_has_no_leader(replicated):
    if len(live(replicated)) == 3:
        until(lambda: leaders_serving(replicated, TOPIC))
        replicated.kill(3)
    victim = next(i for i in (1, 2, 3) if i not in live(replicated))
    up = live(replicated)[0]
    # strict needs all three replicas in sync: once the dead one leaves the ISR, acks=all is refused
    state = until(lambda: (s := etcd_states(replicated, up, STRICT)[0])["leader"] in live(replicated) and len(s["isr"]) == 2 and s)
    assert int(produce(replicated, state["leader"], STRICT, 0, b"all").error_code) == 19  # NOT_ENOUGH_REPLICAS
    assert int(produce(replicated, state["leader"], STRICT, 0, b"one", acks=1).error_code) == 0
    # the dead broker is solo's only replica of some partitions: no leader, named offline
    topology = load_topology(replicated.config_path)
    orphans = [p for p in range(6) if topology.replicas(SOLO, p) == [victim]]
    assert orphans
    parts = until(lambda: (m := metadata(replicated, up, SOLO)) and all(m[p].leader_id == -1 for p in orphans) and m)
    for p in orphans:
        assert (int(parts[p].error_code), list(parts[p].offline_replicas)) == (5, [victim])  # LEADER_NOT_AVAILABLE
