"""Topology plans: what changes, which partitions move, and what apply must refuse."""

from __future__ import annotations

import copy

from shoal.client.structs import TopicPartition as TP
from shoal.router import hashing
from shoal.router.plan import Change, Move, diff
from shoal.router.topology import Topology

BASE = {
    "cluster": "c",
    "epoch": 1,
    "defaults": {"partitions": 3},
    "brokers": [{"id": i, "url": f"http://127.0.0.1:{9090 + i}"} for i in (1, 2, 3)],
    "topics": {"orders": {"partitions": 12}, "old": {"partitions": 2}},
}


def topo(**changes) -> Topology:
    data = copy.deepcopy(BASE)
    data.update(changes)
    return Topology.from_dict(data, source="new.yaml")


def test_no_changes():
    plan = diff(topo(), topo())
    assert plan.same and not plan.changes and not plan.moves
    assert plan.refusals({}, delete_topics=False) == []


def test_topics_config_defaults_and_settings_changes():
    new = topo(
        epoch=2,
        topics={"orders": {"partitions": 14, "flush": "always", "retention_ms": None}, "new": {"partitions": 4}},
        defaults={"partitions": 3, "segment_bytes": 1000},
        settings={"max_wait_ms": 100},
    )
    plan = diff(topo(), new)
    assert plan.changes == [
        Change("+", "topic", "new", "4 partitions"),
        Change("-", "topic", "old", "2 partitions"),
        Change(
            "~",
            "topic",
            "orders",
            "partitions 12 -> 14, flush interval -> always, segment_bytes 134217728 -> 1000, "
            "retention_ms 604800000 -> null",
        ),
        Change("~", "defaults", "defaults", "segment_bytes 134217728 -> 1000"),
        Change("~", "settings", "settings", "max_wait_ms 30000 -> 100"),
    ]
    assert plan.moves == []  # more partitions, new topics and new defaults move nothing
    assert plan.deleted_topics == ["old"]


def test_adding_a_broker_moves_partitions_only_to_it():
    brokers = BASE["brokers"] + [{"id": 4, "url": "http://127.0.0.1:9094"}]
    plan = diff(topo(), topo(epoch=2, brokers=brokers))
    assert plan.changes == [Change("+", "broker", "4", "http://127.0.0.1:9094")]
    expected = [
        Move(t, p, hashing.owner(t, p, [1, 2, 3]), 4)
        for t, n in (("old", 2), ("orders", 12))
        for p in range(n)
        if hashing.owner(t, p, [1, 2, 3, 4]) == 4
    ]
    assert plan.moves == expected and expected


def test_removing_a_broker_moves_only_its_partitions():
    plan = diff(topo(), topo(epoch=2, brokers=BASE["brokers"][:2]))
    assert plan.changes == [Change("-", "broker", "3", "http://127.0.0.1:9093")]
    assert plan.moves and all(m.source == 3 and m.target in (1, 2) for m in plan.moves)
    assert len(plan.moves) == topo().owners("orders").count(3) + topo().owners("old").count(3)


def test_url_change_moves_nothing():
    brokers = copy.deepcopy(BASE["brokers"])
    brokers[0]["url"] = "http://10.0.0.1:9091"
    plan = diff(topo(), topo(epoch=2, brokers=brokers))
    assert plan.changes == [Change("~", "broker", "1", "url http://127.0.0.1:9091 -> http://10.0.0.1:9091")]
    assert plan.moves == []


def test_fewer_partitions_removes_the_tail():
    plan = diff(topo(), topo(epoch=2, topics={"orders": {"partitions": 10}, "old": {"partitions": 2}}))
    owners = topo().owners("orders")
    assert plan.moves == [Move("orders", 10, owners[10], None), Move("orders", 11, owners[11], None)]


def test_refusals_name_partitions_with_data():
    plan = diff(topo(), topo(epoch=2, topics={"orders": {"partitions": 10}, "old": {"partitions": 2}}))
    assert plan.checks(delete_topics=False) == {TP("orders", 10): plan.moves[0].source, TP("orders", 11): plan.moves[1].source}
    assert plan.refusals({TP("orders", 10): 0, TP("orders", 11): 0}, delete_topics=False) == []
    assert plan.refusals({TP("orders", 10): 5, TP("orders", 11): "connection refused"}, delete_topics=False) == [
        "orders/10 holds data (high watermark 5) and would be removed",
        f"orders/11 would be removed, but broker {plan.moves[1].source} could not say if it is empty: connection refused",
    ]


def test_deleting_a_topic_with_data_needs_consent():
    plan = diff(topo(), topo(epoch=2, topics={"orders": {"partitions": 12}}))
    checks = plan.checks(delete_topics=False)
    assert set(checks) == {TP("old", 0), TP("old", 1)}
    assert plan.checks(delete_topics=True) == {}
    assert plan.refusals({TP("old", 0): 0, TP("old", 1): 0}, delete_topics=False) == []
    assert plan.refusals({TP("old", 0): 0, TP("old", 1): 3}, delete_topics=False) == [
        "topic old holds data (partitions 1): deleting it needs --delete-topics (or shoal topic delete)"
    ]
    assert plan.refusals({TP("old", 0): 0, TP("old", 1): 3}, delete_topics=True) == []


def test_epoch_must_grow_unless_nothing_changes():
    assert diff(topo(epoch=3), topo(epoch=3)).refusals({}, delete_topics=False) == []
    changed = topo(epoch=3, topics={"orders": {"partitions": 13}, "old": {"partitions": 2}})
    assert diff(topo(epoch=3), changed).refusals({}, delete_topics=False) == [
        "epoch 3 is not newer than the running epoch 3: set epoch: 4 in new.yaml"
    ]
    assert diff(topo(epoch=3), topo(epoch=2)).refusals({}, delete_topics=False) == [
        "epoch 2 is not newer than the running epoch 3: set epoch: 4 in new.yaml"
    ]


def test_cluster_name_must_match():
    assert diff(topo(), topo(epoch=2, cluster="other")).refusals({}, delete_topics=False) == [
        "the cluster is named 'c', not 'other'"
    ]


def test_to_dict_view():
    plan = diff(topo(), topo(epoch=2, topics={"orders": {"partitions": 11}, "old": {"partitions": 2}}))
    source = plan.moves[0].source
    assert plan.to_dict({TP("orders", 11): 4}, ["why"]) == {
        "cluster": "c",
        "from_epoch": 1,
        "to_epoch": 2,
        "changes": [{"op": "~", "kind": "topic", "name": "orders", "detail": "partitions 12 -> 11"}],
        "moves": [{"topic": "orders", "partition": 11, "from": source, "to": None, "high_watermark": 4}],
        "warnings": [],
        "refusals": ["why"],
    }


def test_growing_a_topic_warns_keyed_producers():
    grown = topo(epoch=2, topics={"orders": {"partitions": 16}, "old": {"partitions": 2}})
    (warning,) = diff(topo(), grown).warnings
    assert "orders grows from 12 to 16 partitions" in warning and "key" in warning
    assert diff(topo(), topo(epoch=2)).warnings == []
