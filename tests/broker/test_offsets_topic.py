"""The records of ``__consumer_offsets`` and the state they build: a snapshot replaces what
came before, so replaying from the latest snapshot gives what replaying everything gives."""

from __future__ import annotations

from shoal.broker.replication.offsets_topic import COMMIT, DELETE, SNAPSHOT, OffsetsState, partition_for
from shoal.router.internal_topics import offsets_topic_config, with_offsets_topic
from shoal.client.structs import OffsetAndMetadata, TopicPartition
from shoal.router.topology import parse_topology

TP0, TP1 = TopicPartition("t", 0), TopicPartition("t", 1)


def replay(log: list) -> OffsetsState:
    state = OffsetsState()
    for key, value in log:
        state.apply(key, value, 100)
    return state


def test_replaying_from_the_latest_snapshot_gives_the_whole_replay():
    log = [
        (COMMIT, ["g", 1, [["t", 0, 5, ""], ["t", 1, 7, "m"]]]),
        (COMMIT, ["h", 4, [["t", 0, 1, ""]]]),
        (DELETE, ["h", None]),
        (COMMIT, ["g", 2, [["t", 0, 9, ""]]]),
    ]
    whole = replay(log)
    assert whole.groups == {"g": {TP0: OffsetAndMetadata(9, ""), TP1: OffsetAndMetadata(7, "m")}}
    assert whole.generations == {"g": 2}
    log.append((SNAPSHOT, whole.snapshot()))
    log.append((COMMIT, ["g", 3, [["t", 1, 8, ""]]]))
    tail = replay([(SNAPSHOT, whole.snapshot()), log[-1]])
    assert tail.groups == replay(log).groups == {"g": {TP0: OffsetAndMetadata(9, ""), TP1: OffsetAndMetadata(8, "")}}
    assert tail.generations == replay(log).generations == {"g": 3}


def test_a_snapshot_is_due_after_half_a_segment_and_at_least_its_own_size():
    state = OffsetsState()
    state.apply(SNAPSHOT, [], 3000)
    state.apply(COMMIT, ["g", 1, [["t", 0, 1, ""]]], 600)
    assert not state.due(1024)  # half a segment, but less than the last snapshot took
    state.apply(COMMIT, ["g", 1, [["t", 0, 2, ""]]], 2400)
    assert state.due(1024)


def test_the_topic_is_added_only_to_a_replicated_topology():
    text = """
cluster: c
brokers: [{id: 1, url: "http://127.0.0.1:1"}, {id: 2, url: "http://127.0.0.1:2"}]
defaults: {min_insync_replicas: 2, replication_factor: 2, segment_bytes: 1073741824}
topics: {t: {partitions: 2}}
"""
    static = parse_topology(text.replace("defaults: {min_insync_replicas: 2, replication_factor: 2, ", "defaults: {"))
    assert with_offsets_topic(static) is static
    replicated = parse_topology(text + "metadata: {etcd: [http://127.0.0.1:2379]}\n")
    config = with_offsets_topic(replicated).topics["__consumer_offsets"]
    assert config == offsets_topic_config(replicated)
    assert (config.partitions, config.replication_factor, config.min_insync_replicas) == (8, 2, 2)
    assert config.segment_bytes == 16 * 1024 * 1024 and config.retention_ms is None and not config.unclean_leader_election
    assert "__consumer_offsets" not in replicated.topics
    assert len({partition_for(f"group-{i}") for i in range(100)}) == 8
